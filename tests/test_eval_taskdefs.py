"""One definition per eval task: every fact of a JP-8 task lives in its TaskDef (lm-eval twin, metric, Hugging
Face row layout, Hub sources, shots), and the JP-8 suite is the explicit list of its eight definitions."""

from __future__ import annotations

from youri.eval import averages, leaderboard, presets
from youri.eval.tasks import JP8, TASKS, jnli


def test_jp8_is_the_explicit_list_of_eight_definitions():
    names = [t.name for t in JP8]
    assert names == ["jcommonsenseqa", "jnli", "marc_ja", "jsquad", "jaqket_v2", "xlsum_ja", "xwinograd_ja", "mgsm"]
    assert averages.JP8 == tuple(names) == presets.PRESETS["ja8"].tasks
    assert [t.shots for t in JP8] == [3, 3, 3, 2, 1, 1, 0, 5] and all(TASKS[n] is t for n, t in zip(names, JP8))


def test_every_definition_names_its_lm_eval_twin_and_hub_sources():
    for task in JP8:
        yaml_text = (leaderboard.yaml_dir() / f"{task.leaderboard}.yaml").read_text(encoding="utf-8")
        assert f"metric: {task.leaderboard_metric}" in yaml_text or f".{task.leaderboard_metric}" in yaml_text, task
        assert task.sources and all(task.split in s.splits for s in task.sources), task.name
    assert JP8[2].withdrawn and not [t for t in JP8 if t.withdrawn and t.name != "marc_ja"]


def test_hf_row_is_the_hugging_face_layout():
    doc = {"id": 7, "premise": "P", "hypothesis": "H", "gold": 1}
    assert jnli.TASK.hf_row(doc) == {"sentence_pair_id": "7", "sentence1": "P", "sentence2": "H", "label": 1}
    winograd = TASKS["xwinograd_ja"].hf_row({"sentences": ["a", "b"], "gold": 1})
    assert winograd == {"sentence1": "a", "sentence2": "b", "answer": "2"}
