"""youri: turn an English-first Llama-family model into a Japanese model family.

Stage map (one module per stage, one dataclass config each; ``youri --help`` lists what exists):

    data -> (vocab) -> pretrain -> sft (instruction) -> sft (chat) -> quantize -> eval -> report
"""

__version__ = "0.1.0"
