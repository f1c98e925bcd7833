"""Evaluation: JP-8 as the Stability-AI jp-stable harness defines it, run through EleutherAI lm-eval.

- ``tasks``          — one module per JP-8 task (data reader, prompt versions) and the task registry.
- ``metrics``        — the harness's metrics (exact match, MeCab F1, ROUGE-2, MGSM answer extraction,
  balanced accuracy, macro-F1, XL-Sum's bootstrap aggregate).
- ``presets``        — the published harness runs (tasks, versions, shots, generation rule); model kind -> preset.
- ``generation``     — the harness's two generation rules; ``hf-causal`` implemented here.
- ``lm_eval_bridge`` — youri's prompts as lm-eval tasks, and the lm-eval model wrappers.
- ``leaderboard``    — lm-eval's own ``japanese_leaderboard`` tasks on the same local files.
- ``averages``       — what an average may be called (JP-8 only when all eight ran; rinna's 4/6-task subsets).
- ``download``       — ``youri eval --download``: every JP-8 dataset from the Hugging Face Hub, as local files.
- ``chatbench``      — judged chat suites (Japanese MT-Bench, Japanese Vicuna QA): answers, judgments, scores.
- ``judge``          — LLM-as-a-judge grading (FastChat's prompts in ``judge_prompts/``) through any
  OpenAI-compatible endpoint, with the on-disk judgment cache.
- ``evaluate``       — the ``youri eval`` stage.
"""
