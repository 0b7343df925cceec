"""`distill handback` of language-model students: an hf: causal LM comes back as a folder that
``AutoModelForCausalLM`` loads with the same logits; distill's own GPT is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.cli import main
from lm.lm_helpers import corpus

transformers = pytest.importorskip("transformers")

TINY = ["data.options.block_size=16", "data.train_subset=8", "data.test_subset=4",
        "train.batch_size=4", "train.eval_batch_size=4", "train.progress=false", "train.max_steps=2",
        "teacher=null"]  # fmt: skip


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    """A 2-step run of a tiny random Llama student (no teacher) on the generated corpus."""
    tmp = tmp_path_factory.mktemp("llama")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp / "llama")
    run = tmp / "run"
    root = corpus(tmp / "corpus")
    argv = ["shakespeare/scratch", f"data.root={root}", *TINY, f"student.name=hf:{tmp / 'llama'}"]
    assert main(["train", *argv, f"output={run}"]) == 0
    return run


def test_an_hf_causal_student_hands_back_for_auto_model_for_causal_lm(llama_run: Path, capsys):
    run = llama_run
    assert main(["handback", str(run)]) == 0, capsys.readouterr().err
    folder = run / "hf"
    assert not (folder / "modules.json").exists()  # no sentence-transformers files for an LM
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    from distill.config.run import open_run

    student = open_run(run, "best").student.eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, student(input_ids=ids).logits, atol=1e-5)


def test_distills_own_gpt_is_refused_with_the_reason(tmp_path: Path, capsys):
    run = tmp_path / "run"
    root = corpus(tmp_path / "corpus")
    assert main(["train", "shakespeare/scratch", f"data.root={root}", *TINY, f"output={run}"]) == 0
    capsys.readouterr()
    assert main(["handback", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distill's own GPT" in err and "distill export" in err
    assert not (run / "image").exists()


def test_an_error_after_loading_an_hf_model_is_one_stderr_line(llama_run: Path):
    """Loading a transformers model imports torchao, whose enum registration makes torch log a notice
    per class on stderr; the command line still prints only its own error line."""
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "distill", "handback", str(llama_run), "--format", "image"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: the student of {llama_run} (hf:{llama_run.parent / 'llama'}) hands back as hf, not "
        "image; use --format hf (or auto)"
    ]
