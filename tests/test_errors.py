"""The catalogue of user mistakes (docs/errors.md): each one, fed to the command a user would type,
gives its one-line message and exit status 2, with nothing on disk changed; and the catalogue lists
every message, so the document cannot fall behind the code."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "checkpoint"
DEBUG = "configs/model/debug.yaml"


def _files(tmp):
    (tmp / "ds-list.json").write_text("[1, 2]")
    (tmp / "ds-typo.json").write_text('{"zero_optimisation": {"stage": 2}}')
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.txt").write_text("  \n\n")
    (tmp / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp / "ids.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    import gzip

    whole = gzip.compress(b'{"text": "a record"}\n' * 200)
    (tmp / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # a download that stopped
    (tmp / "pairs.tsv").write_text("good film\t1\nbad film\t0\n")
    (tmp / "pairs.txt").write_text("good film\t1\nbad film\t0\n")
    damaged = tmp / "ck" / "step_00000010"
    shutil.copytree(GOLDEN, damaged)
    shard = damaged / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    planted = tmp / "planted" / "step_00000010"
    shutil.copytree(GOLDEN, planted)

    class Payload:  # unpickled, it would create a file (and the snapshot would show it)
        def __reduce__(self):
            return (open, (str(tmp / "PWNED"), "w"))

    torch.save({"module": Payload()}, planted / "mp_rank_00_model_states.pt")
    from pretrain import checkpoint as ckpt

    info = ckpt.saved_info(planted)
    info["files"].update(ckpt.manifest(planted, ["mp_rank_00_model_states.pt"]))
    (planted / ckpt.COMPLETE).write_text(json.dumps(info))
    # a checkpoint of a newer release (format 99), and one whose config has a key this release lacks
    newer, older = tmp / "newer" / "step_00000010", tmp / "older" / "step_00000010"
    for tag in (newer, older):
        shutil.copytree(GOLDEN, tag)
    info = ckpt.saved_info(newer)
    (newer / ckpt.COMPLETE).write_text(json.dumps({**info, "format": 99}))
    (older / "config.yaml").write_text((older / "config.yaml").read_text().replace("num_layers:", "n_layer:"))
    info = ckpt.saved_info(older)
    info["files"].update(ckpt.manifest(older, ["config.yaml"]))
    (older / ckpt.COMPLETE).write_text(json.dumps(info))
    garbled = tmp / "garbled" / "checkpoints" / "step_00000010"  # a record cut off (or edited) by hand
    shutil.copytree(GOLDEN, garbled)
    (garbled / ckpt.COMPLETE).write_text('{"format": 1, "step": 10, "wor')
    # a label only the validation share held out of training has (data.validation_fraction=0.15)
    from pretrain.data.sources import held_out

    rows = [f"film {i} was {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    rows += [t + ",neutral" for t in (f"film {i} was fine" for i in range(200)) if held_out(t, 0.15)][:3]
    (tmp / "held.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    # what a classifier's checkpoint says of itself (its labels and task), without its weights
    cls = tmp / "cls" / "step_00000010"
    shutil.copytree(GOLDEN, cls)
    (cls / "labels.json").write_text('["0", "1"]')
    with open(cls / "config.yaml", "a") as f:
        f.write(f"init_from: {GOLDEN}\ntask: {{kind: classify}}\n")
    info = ckpt.saved_info(cls)
    info["files"].update(ckpt.manifest(cls, ["config.yaml", "labels.json"]))
    (cls / ckpt.COMPLETE).write_text(json.dumps(info))


def pretrain(*overrides):
    return ["pretrain", DEBUG, "output_dir={tmp}/runs", "data.cache_dir={tmp}/cache", "log.wandb=off", *overrides]


# (what, argv after `python -m`, the message or its start)
CASES = [
    ("config: unknown key", pretrain("model.num_layer=3"),
     "config error: unknown key 'model.num_layer'; did you mean 'model.num_layers'?"),
    ("config: wrong type", pretrain("model.d_model=abc"), "config error: model.d_model='abc': expected an integer"),
    ("config: not a finite number", pretrain("train.lr=.nan"), "config error: train.lr=nan: must be a finite number"),
    ("config: learning rate out of range", pretrain("train.lr=1e9"),
     "config error: train.lr=1000000000.0: must be in (0, 1]"),
    ("config: unsafe run name", pretrain("name=a/b"),
     "config error: name='a/b': use letters, digits, '.', '_' and '-'"),
    ("config: DeepSpeed JSON not an object", pretrain("deepspeed.config_file={tmp}/ds-list.json"),
     "must hold a JSON object of DeepSpeed sections, not a list"),
    ("config: unknown DeepSpeed section", pretrain("deepspeed.config_file={tmp}/ds-typo.json"),
     "unknown DeepSpeed section 'zero_optimisation'; did you mean 'zero_optimization'?"),
    ("config: offload without ZeRO", pretrain("deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"),
     "config error: deepspeed.offload_optimizer=true needs zero_stage 1, 2 or 3, not 0"),
    ("config: global batch not a multiple", pretrain("train.micro_batch_size=4", "train.global_batch_size=6"),
     "config error: train.global_batch_size=6: must be a multiple of micro_batch_size=4"),
    ("data: no file matches", pretrain("data.sources=[{files: '{tmp}/none/*.txt'}]"),
     "config error: data.sources[0].files: nothing matches"),
    ("data: empty file", pretrain("data.sources=[{files: '{tmp}/empty.jsonl'}]"), "empty.jsonl is empty"),
    ("data: blank file", pretrain("data.sources=[{files: '{tmp}/blank.txt'}]"),
     "config error: data.sources[0]: the train data has no non-empty documents (files {tmp}/blank.txt)"),
    ("data: not UTF-8", pretrain("data.sources=[{files: '{tmp}/latin.jsonl'}]"),
     "latin.jsonl is not UTF-8 text (byte 13); convert it, e.g. iconv -f latin1 -t utf-8"),
    ("data: a cut-off archive, under the launcher", ["launch", "local", DEBUG, "--nproc-per-node", "2",
                                                     "output_dir={tmp}/runs", "data.cache_dir={tmp}/cache",
                                                     "data.sources=[{files: '{tmp}/cut.jsonl.gz'}]"],
     "cut.jsonl.gz cannot be decompressed (EOFError: Compressed file ended before the end-of-stream marker was "
     "reached): truncated or corrupt?"),
    ("data: text column of numbers", pretrain("data.sources=[{files: '{tmp}/ids.jsonl', text_column: id}]"),
     "config error: data.sources[0].text_column='id': holds int64 values (example 0: int '1'), not text"),
    ("data: named split on local files", pretrain("data.sources=[{files: '{tmp}/pairs.tsv', validation_split: dev}]"),
     "config error: data.sources[0].validation_split='dev': only hub datasets have named splits; for local files "
     "give validation_files"),
    ("data: headerless table without names", pretrain("data.sources=[{files: '{tmp}/pairs.tsv', header: false}]"),
     "config error: data.sources[0].header=false: give column_names, e.g. [text, label]"),
    ("data: a column the table does not have",
     pretrain("data.sources=[{files: '{tmp}/pairs.tsv', header: false, column_names: [sentence, label]}]"),
     "config error: data.sources[0].text_column='text': no such column; the data has ['sentence', 'label']"),
    ("data: bad file under the launcher", ["launch", "local", DEBUG, "--nproc-per-node", "2",
                                           "output_dir={tmp}/runs", "data.cache_dir={tmp}/cache",
                                           "data.sources=[{files: '{tmp}/latin.jsonl'}]"],
     "config error: data.sources[0].files: {tmp}/latin.jsonl is not UTF-8 text"),
    ("data: a tokenizer file that is not one, under the launcher (a traceback in rank 0 before)",
     ["launch", "local", DEBUG, "--nproc-per-node", "2", "output_dir={tmp}/runs", "data.cache_dir={tmp}/cache",
      "data.tokenizer.path={tmp}/ds-list.json"],
     "config error: data.tokenizer.path='{tmp}/ds-list.json' does not load as a tokenizer (Exception: "),
    ("export: OUT is a file (blamed on the checkpoint before)", ["pretrain.export", str(GOLDEN), "{tmp}/pairs.tsv"],
     "config error: OUT='{tmp}/pairs.tsv': {tmp}/pairs.tsv is a file, not a folder; choose another OUT"),
    ("checkpoint: none there", ["pretrain.export", "{tmp}/nothing", "{tmp}/out"],
     "config error: no complete checkpoint in"),
    ("checkpoint: damaged file", ["pretrain.export", "{tmp}/ck/step_00000010", "{tmp}/out"],
     "mp_rank_00_model_states.pt has 100 bytes"),
    ("checkpoint: pickle payload", ["pretrain.export", "{tmp}/planted/step_00000010", "{tmp}/out"],
     "refusing to load"),
    ("checkpoint: written by a newer release", ["pretrain.export", "{tmp}/newer", "{tmp}/out"],
     "config error: checkpoint {tmp}/newer/step_00000010 is in checkpoint format 99, written by a newer release"),
    ("checkpoint: config of an older release", pretrain("train.resume={tmp}/older/step_00000010"),
     "config error: the config of checkpoint {tmp}/older/step_00000010 does not read in this release (unknown key "
     "'model.n_layer'; did you mean 'model.num_layers'?); load it with the release that wrote it and export it"),
    ("checkpoint: resumed at a ZeRO stage it does not load at",
     pretrain(f"train.resume={GOLDEN}", "deepspeed.zero_stage=2", "deepspeed.precision=fp32"),
     "config error: deepspeed.zero_stage changed 0 -> 2: a ZeRO-0 checkpoint holds the whole optimizer in fp32's own "
     "format, which only ZeRO-0 in fp32 loads; resume with deepspeed.zero_stage=0 deepspeed.precision=fp32, or start "
     "a new run"),
    ("checkpoint: the same under the launcher", ["launch", "local", DEBUG, "--nproc-per-node", "2",
                                                 "output_dir={tmp}/runs", "data.cache_dir={tmp}/cache",
                                                 f"train.resume={GOLDEN}", "deepspeed.zero_stage=3"],
     "config error: deepspeed.zero_stage changed 0 -> 3: a ZeRO-0 checkpoint holds the whole optimizer"),
    ("checkpoint: a record that does not read, under the launcher (a traceback before)",
     ["launch", "local", DEBUG, "--nproc-per-node", "2", "output_dir={tmp}/runs", "data.cache_dir={tmp}/cache",
      "train.resume={tmp}/garbled"],
     "config error: no intact checkpoint in {tmp}/garbled/checkpoints: every complete one failed its check"),
    *([("config: a precision this machine has no kernels for, under the launcher",
        ["launch", "local", DEBUG, "--nproc-per-node", "2", "cluster.gpus=false", "output_dir={tmp}/runs",
         "deepspeed.precision=fp16"],
        "config error: deepspeed.precision=fp16: DeepSpeed cannot train in fp16 on this machine's CPU (no GPUs)")]
      if not torch.ops.mkldnn._is_mkldnn_fp16_supported() else []),  # a CPU with oneDNN fp16 trains in it
    ("cluster: hosts without a hostfile", ["launch", "hosts", "configs/pretrain/default.yaml", "--dry-run"],
     "config error: hosts needs a hostfile"),
    ("cluster: image with shell characters",
     ["launch", "k8s", "configs/pretrain/default.yaml", "--image", "img;rm -rf /", "--dry-run", "--skip-preflight"],
     "config error: cluster.k8s.image='img;rm -rf /': an image reference has letters, digits"),
    ("fine-tuning: no such starting point", ["finetune", "configs/finetune/stdlib-packages.yaml",
                                             "init_from={tmp}/nowhere", "output_dir={tmp}/runs"],
     "init_from='{tmp}/nowhere': no such file or directory"),
    ("fine-tuning: no such starting point, under the launcher (before any process starts)",
     ["launch", "local", "configs/finetune/stdlib-packages.yaml", "--nproc-per-node", "2", "init_from={tmp}/nowhere",
      "output_dir={tmp}/runs"],
     "config error: init_from='{tmp}/nowhere': no such file or directory"),
    ("fine-tuning: a label only the held-out validation share has, under the launcher (before any process starts)",
     ["launch", "local", "configs/finetune/stdlib-packages.yaml", "--nproc-per-node", "2", "cluster.gpus=false",
      f"init_from={GOLDEN}", "task.builtin=null", "data.sources=[{files: '{tmp}/held.csv'}]", "output_dir={tmp}/runs",
      "data.cache_dir={tmp}/cache"],
     "config error: labels ['neutral'] appear in the validation data (held out of training: "
     "data.validation_fraction=0.15) but never in training (training has ['neg', 'pos'])"),
    ("fine-tuning: resumed with another classification head, under the launcher",
     ["launch", "local", "configs/finetune/stdlib-packages.yaml", "--nproc-per-node", "2", f"init_from={GOLDEN}",
      "train.resume={tmp}/cls/step_00000010", "output_dir={tmp}/runs"],
     "config error: task.head changed linear -> hf: checkpoint {tmp}/cls/step_00000010 holds the linear head; resume "
     "with task.head=linear, or start a new run"),
    ("fine-tuning: a kernel that takes no padding mask", ["finetune", "configs/finetune/stdlib-names.yaml",
                                                          "task.attention=flash", "output_dir={tmp}/runs"],
     "config error: task.attention='flash' takes no padding mask, which padded batches need (and an encoder-decoder's "
     "cross-attention over padded sources); use one of ['auto', 'sdpa', 'flex', 'eager']"),
    ("generation: a length penalty that is not a number", ["finetune.generate", "{tmp}/ck", "--prompt", "x",
                                                           "--num-beams", "2", "--length-penalty", "nan"],
     "config error: --length-penalty nan: must be a finite number (1: the mean log-probability per token; 0: the "
     "plain sum)"),
    ("generation: bad sampling flag", ["finetune.generate", "{tmp}/ck", "--prompt", "x", "--max-new-tokens", "-3"],
     "config error: --max-new-tokens -3: must be an integer >= 1"),
    ("prediction: a checkpoint that writes text", ["finetune.predict", str(GOLDEN), "{tmp}/pairs.tsv"],
     "is not a classification checkpoint (no labels.json); for what it writes: python -m finetune.generate "),
    ("prediction: --out names a folder (found before predicting, not after)",
     ["finetune.predict", "{tmp}/cls", "{tmp}/pairs.tsv", "--out", "{tmp}"],
     "config error: --out='{tmp}' is a folder; give a file's name (in it, say)"),
    ("prediction: text and label lines as plain text", ["finetune.predict", "{tmp}/cls", "{tmp}/pairs.txt"],
     "line 1 holds 2 tab-separated fields (a text and a label?)"),
    ("prediction: weights that are not the classifier's",
     ["finetune.predict", "{tmp}/cls", "{tmp}/pairs.tsv", "--no-header", "--column-names", "text,label"],
     "the weights do not fit the classifier its config describes (missing ['body.embed.tokens.weight'"),
    ("evaluation: no test data", ["finetune.evaluate", "{tmp}/cls", "--split", "test"],
     "config error: no test data: no source of this run gives test_files (or test_split)"),
    ("inspection: layer out of range", ["finetune.inspect", str(GOLDEN), "--text", "x", "--layer", "5",
                                        "--out", "{tmp}/pictures"],
     "config error: --layer 5: this model has 2 layers (0-1)"),
]  # fmt: skip


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_each_mistake_is_one_line_exit_2_and_changes_nothing(tmp_path):
    _files(tmp_path)
    before = snapshot(tmp_path)
    failures = []
    for what, argv, message in CASES:
        args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
        proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                              env=env)  # fmt: skip
        expected = message.replace("{tmp}", str(tmp_path))
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("config error:")]
        if proc.returncode != 2 or len(lines) != 1 or expected not in lines[0] or "Traceback" in proc.stderr:
            failures.append(f"{what}: exit {proc.returncode}, {proc.stderr[-800:]}")
        if snapshot(tmp_path) != before:
            failures.append(f"{what}: changed {set(snapshot(tmp_path)) ^ set(before)}")
    assert not failures, "\n".join(failures)


def test_docs_errors_lists_every_message():
    doc = (ROOT / "docs" / "errors.md").read_text()
    missing = [what for what, _, message in CASES if message.split("{tmp}")[0].replace("config error: ", "") not in doc]
    assert not missing, f"docs/errors.md lacks: {missing}"
