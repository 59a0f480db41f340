"""One prepared run that proves the project on a CUDA GPU and measures it beside PyTorch:
`python -m experiments.gpu_suite --out DIR`.

    python -m experiments.gpu_suite --out DIR [--budget-s 540] [--smoke] [--sports FILE]

Stages, in this order, each in its own subprocess with a time box cut from what is left of --budget-s, each
writing its results as it finishes (a kill keeps the finished stages):
  1. env          GPU, driver, jax / jaxlib / flax / optax / torch / faiss versions, precision settings;
  2. correctness  the PyTorch parity tests (encoder, DuoRec loss and gradients, FTragrec terms; JAX on the
                  default device at `highest` matmul precision, tests/conftest.py) and the retrieval tests
                  (exact vs FAISS Flat, ties, real Beauty queries);
  3. bench_fp32   experiments.bench on the device with TF32 off on both sides (--fp32-matmul): DuoRec step
                  (JAX vs PyTorch eager vs torch.compile), full-sort evaluation, FTragrec step and epoch
                  (exact and FAISS), exact top-k at 131k, 10^6 and 10^7 keys;
  4. bench_default the same with TF32 allowed on both sides: JAX's default on GPUs, and PyTorch set to
                  'high' (PyTorch's own default is full fp32, which bench_fp32 measures);
  5. train_beauty DuoRec on the embedded Amazon Beauty, seed 2020, to early stopping, timed end to end;
  6. train_sports DuoRec on Sports_and_Outdoors (--sports FILE), seed 2020, to early stopping.
Each trained best model comes back as one archive with its log and test metrics.

DIR holds at most 8 files, so that a device run can return them all: summary.json (every stage's status,
seconds and parsed results), summary.md (the same as tables), logs.tar.gz (every stage's full output), and
one .tar.gz per trained model.

On the lent device machine (Python 3.12, jax with CUDA, torch, no faiss, no network, ../shared absent), from the
repository root, with the faiss-cpu wheel in .whl/ and the Sports file in .gpu_data/ (both ignored by git;
`python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_28_x86_64 -d .whl faiss-cpu==1.15.1` and a copy of
../shared/data/amazon/Sports_and_Outdoors.txt), carrying both:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:$PWD python3 -m experiments.gpu_suite --out $OUT --budget-s 540 \
        --sports .gpu_data/Sports_and_Outdoors.txt

--smoke: the same stages on tiny sizes (a tiny generated dataset, 1-2 epochs, small benches, one parity test
file), any device; tests/test_gpu_suite.py runs it so that the script cannot rot between GPU lendings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from experiments.cli_common import HelpFormatter
from ftragrec_jax.atomic import write_atomic

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "correctness", "bench_fp32", "bench_default", "train_beauty", "train_sports")
# seconds each stage may take at most (the remaining budget cuts them further); training takes what is left
BOXES = {
    "env": 60,
    "correctness": 150,
    "bench_fp32": 150,
    "bench_default": 120,
    "train_beauty": 240,
    "train_sports": 600,
}
PARITY_TESTS = [
    "tests/test_parity_encoder.py",
    "tests/test_parity_duorec.py",
    "tests/test_parity_ftragrec.py",
    "tests/test_search.py",
    "tests/test_search_real.py",
]
SMOKE_TESTS = ["tests/test_search.py::test_fewer_allowed_than_k_gives_minus_one"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.gpu_suite", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("--out", required=True, help="folder for summary.json, summary.md, logs and model archives")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-clock seconds for all stages together")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device (the test suite runs this)")
    p.add_argument(
        "--sports",
        default=None,
        help="Sports_and_Outdoors file for train_sports (skipped without it); ../shared does not "
        "travel to a device machine, so bring the file inside the working tree",
    )
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    args = p.parse_args(argv)
    unknown = [s for s in args.stages.split(",") if s not in STAGES]
    if unknown:
        p.error(f"--stages: unknown {unknown}; expected names from {list(STAGES)}")
    return args


def _env_record() -> dict:
    """What the numbers ran on; imports jax and torch in this subprocess only."""
    import jax

    rec = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }
    from importlib import metadata

    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "faiss-cpu", "torch"):
        try:
            rec[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            rec[name] = None
    try:
        from converters.reference.torch_bench import environment  # converters/ is where torch is imported

        rec.update(environment())
    except ImportError:
        rec["torch_cuda"] = None
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        rec["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        rec["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    return rec


def _tiny_dataset(path: Path, n_users: int = 80, n_items: int = 40, seed: int = 0) -> Path:
    """One line per user (`user item item ...`) with a learnable cycle: the smoke mode's training data."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        start, length = int(rng.integers(1, n_items)), int(rng.integers(6, 14))
        items = [(start + i - 1) % (n_items - 1) + 1 for i in range(length)]
        lines.append(" ".join(map(str, [u, *items])))
    path.write_text("\n".join(lines) + "\n")
    return path


def _stage_commands(args, out: Path) -> dict[str, list[str] | None]:
    py = sys.executable
    work = out / "work"

    def train(config: str, data: str, run: str, extra=()) -> list[str]:
        return [
            py,
            "-m",
            "experiments.train",
            "--config",
            f"experiments/configs/{config}",
            "--set",
            f"data={data}",
            "--set",
            "seed=2020",
            "--set",
            "show_progress=false",
            "--set",
            f"output_dir={work / run}",
            *extra,
        ]

    bench = [
        py,
        "-m",
        "experiments.bench",
        "--what",
        "duorec_step,eval,ftragrec_step,ftragrec_epoch,retrieval",
        "--kb",
        "131413,1000000,10000000",
    ]
    tests = PARITY_TESTS
    beauty_data, sports_data, small = "", args.sports, ()  # data= (empty): the embedded Beauty file
    if args.smoke:
        beauty_data = sports_data = str(_tiny_dataset(work / "tiny.txt"))
        small = (
            "--set",
            "hidden_size=16",
            "--set",
            "inner_size=32",
            "--set",
            "MAX_ITEM_LIST_LENGTH=10",
            "--set",
            "min_user_inter_num=3",
            "--set",
            "min_item_inter_num=1",
            "--set",
            "train_batch_size=32",
            "--set",
            "epochs=1",
            "--set",
            "eval_batch_size=64",
        )
        bench = [
            py,
            "-m",
            "experiments.bench",
            "--what",
            "retrieval",
            "--data",
            "synthetic",
            "--items",
            "300",
            "--users",
            "200",
            "--kb",
            "2000",
            "--batch",
            "32",
            "--max-len",
            "10",
            "--repeats",
            "1",
            "--epoch-repeats",
            "1",
            "--no-torch-compile",
        ]
        tests = SMOKE_TESTS
    return {
        "env": [py, "-m", "experiments.gpu_suite", "--_env", str(work / "env.json")],
        "correctness": [py, "-m", "pytest", "-p", "no:cacheprovider", *tests],
        "bench_fp32": [*bench, "--fp32-matmul", "--json", str(work / "bench_fp32.json")],
        "bench_default": [*bench, "--json", str(work / "bench_default.json")],
        "train_beauty": train("beauty_duorec.yaml", beauty_data, "beauty", small),
        "train_sports": None if sports_data is None else train("sports_duorec.yaml", sports_data, "sports", small),
    }


def _run_stage(cmd: list[str], box: float, log: Path) -> dict:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=box).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {box:.0f} s"
    return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "box_s": round(box, 1)}


def _parse(name: str, work: Path, log: Path) -> dict:
    """The figures each stage produced, from its files (never invented: absent files give nothing)."""
    if name == "env" and (work / "env.json").is_file():
        return json.loads((work / "env.json").read_text())
    if name.startswith("bench_") and (work / f"{name}.json").is_file():
        data = json.loads((work / f"{name}.json").read_text())
        return {"rows": data.get("rows", data)}
    if name == "correctness":
        tail = [ln for ln in log.read_text().splitlines() if " passed" in ln or " failed" in ln or "error" in ln]
        return {"pytest": tail[-1].strip("= ") if tail else None}
    if name.startswith("train_"):
        run = work / name.split("_", 1)[1]
        res = run / "results.json"
        if res.is_file():
            r = json.loads(res.read_text())
            return {"results": {k: r[k] for k in ("best_epoch", "valid", "test", "train_time_s") if k in r}}
    return {}


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text), binary=False)


def _write_tar(dest: Path, members: list[tuple[Path, str]]) -> None:
    def write(f):
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for src, arcname in members:
                tar.add(src, arcname=arcname)

    write_atomic(dest, write)


def _markdown(summary: dict) -> str:
    lines = [
        f"# GPU suite, {summary['date']}",
        "",
        f"Command: `{summary['command']}`",
        "",
        "| stage | status | seconds | box (s) |",
        "|---|---|---|---|",
    ]
    for name, st in summary["stages"].items():
        lines.append(f"| {name} | {st['status']} | {st.get('seconds', '')} | {st.get('box_s', '')} |")
    env = summary["stages"].get("env", {}).get("result", {})
    if env:
        lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    for name in ("bench_fp32", "bench_default"):
        rows = summary["stages"].get(name, {}).get("result", {}).get("rows")
        if rows:
            lines += ["", f"## {name}", "", "| bench | side | median ms | ratio |", "|---|---|---|---|"]
            for r in rows:
                med, ratio = r.get("median_ms"), r.get("ratio")
                lines.append(
                    f"| {r.get('bench', '')} {r.get('case', '')} | {r.get('side', '')} | "
                    f"{'' if med is None else f'{med:.3f}'} | {'' if ratio is None else f'{ratio:.2f}x'} |"
                )
    for name in ("train_beauty", "train_sports"):
        res = summary["stages"].get(name, {}).get("result", {}).get("results")
        if res:
            test = res.get("test", {})
            lines += [
                "",
                f"## {name}",
                "",
                f"best epoch {res.get('best_epoch')}, train {res.get('train_time_s')} s; "
                + ", ".join(f"test {k} {test[k]}" for k in ("hit@10", "ndcg@10") if k in test),
            ]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget_s
    cmds = _stage_commands(args, out)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "smoke": args.smoke,
        "command": " ".join(["python -m experiments.gpu_suite", *sys.argv[1:]]),
        "stages": {},
    }
    wanted = args.stages.split(",")
    for name in STAGES:
        if name not in wanted:
            continue
        cmd = cmds[name]
        left = deadline - time.perf_counter()
        if cmd is None:
            summary["stages"][name] = {"status": "skipped (no --sports file)"}
        elif left < 5:
            summary["stages"][name] = {"status": "skipped (budget spent)"}
        else:
            log = work / f"{name}.log"
            st = _run_stage(cmd, min(BOXES[name], left), log)
            st["result"] = _parse(name, work, log)
            summary["stages"][name] = st
            model = work / name.split("_", 1)[1] / "best_model" if name.startswith("train_") else None
            if model is not None and model.is_dir():
                run_dir = model.parent  # best_model, results.json, metrics.jsonl, train.log; no checkpoints
                keep = [(p, f"{name}/{p.name}") for p in sorted(run_dir.iterdir()) if p.name != "checkpoints"]
                _write_tar(out / f"{name.split('_', 1)[1]}_duorec.tar.gz", keep)
        _write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        _write_text(out / "summary.md", _markdown(summary))
        _write_tar(out / "logs.tar.gz", [(f, f.name) for f in sorted(work.glob("*.log")) + sorted(work.glob("*.json"))])
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_env"]:  # stage 1, in its own process so that a broken CUDA setup cannot stop the suite
        _write_text(Path(argv[1]), json.dumps(_env_record(), indent=1) + "\n")
        return 0
    summary = run(parse_args(argv))
    for name, st in summary["stages"].items():
        print(f"{name:14s} {st['status']:28s} {st.get('seconds', '')}")
    return (
        0
        if all(st["status"] == "ok" or st["status"].startswith("skipped (no") for st in summary["stages"].values())
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
