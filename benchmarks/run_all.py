"""Run the evidence suite: every benchmark script, one after another, results as JSON.

    python benchmarks/run_all.py --quick [--out DIR]    # 701 s on 2 cores on a slow day (2026-12-07)
    python benchmarks/run_all.py [--out DIR] [--resume]   # the full suite (roughly 20 hours; --resume skips steps done)

Each step runs as its own process (one at a time: the machine's cores belong to it), its output
goes to ``DIR/<step>.log`` and its JSON and figures into ``DIR/<step>/``; ``DIR/run_all.json``
lists every step with its command, exit status, wall time and the commit it ran from (a
resumed suite may span several commits). A failing step is reported and
the suite goes on. Default ``DIR``: ``benchmarks/results/quick`` or ``benchmarks/results/full``.
Needs ../shared/data for the real-data steps. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"


def steps(quick: bool, out: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(name, arguments of ``python``) of each step."""
    def script(name: str, *args: str) -> list[str]:
        return [str(HERE / name), *args]

    if quick:
        return [
            ("scaling", script("scaling.py", "--quick", "--out", str(out / "scaling"))),
            ("recovery_quartz", script("recovery.py", "--quick", "--out", str(out / "recovery_quartz"))),
            ("quartz_epoch", script("quartz_epoch.py", "--tilts", "14", "--repeats", "1", "--json",
                                    str(out / "quartz_epoch.json"))),
        ]
    def quartz(name: str, *extra: str) -> tuple[str, list[str]]:
        return f"quartz_refine_{name}", script("quartz_refine.py", "--tilts", "42", *extra,
                                               "--out", str(out / f"quartz_refine_{name}"))

    def cspbbr3(name: str, *extra: str) -> tuple[str, list[str]]:
        return f"cspbbr3_refine_{name}", script("cspbbr3.py", "--report-every", "10", *extra,
                                                "--out", str(out / f"cspbbr3_refine_{name}"))

    models = ("neural_grid", "neural", "perframe", "plate", "constant")
    refinements = {name: [] for name in models}
    for name in models:
        model = ["--thickness-model", name.replace("_", "-")]
        for suffix, extra in (("", []), ("_absorption", ["--absorption", "0.05"])):
            refinements[name] += [quartz(name + suffix, *model, *extra), cspbbr3(name + suffix, *model, *extra)]
    return [  # the default recipe's evidence first, so that a partial run has it
        # the reference workload's refinement is the default recipe's quartz refinement, so it has no step of its own
        ("quartz_epoch", script("quartz_epoch.py", "--json", str(out / "quartz_epoch.json"),
                                "--refine", str(out / "quartz_refine_neural_grid"))),
        *(step for step in refinements["neural_grid"] if step[0] != "quartz_refine_neural_grid"),
        quartz("kinematic", "--kinematic"),
        quartz("inverted", "--invert"),
        ("recovery_quartz", script("recovery.py", "--structure", "quartz", "--out", str(out / "recovery_quartz"))),
        ("recovery_cspbbr3", script("recovery.py", "--structure", "cspbbr3", "--out", str(out / "recovery_cspbbr3"))),
        ("malik_quartz", script("recovery.py", "--malik", "quartz", "--tilts", "21", "--out", str(out / "malik_quartz"))),
        ("malik_cspbbr3", script("recovery.py", "--malik", "cspbbr3", "--gmax", "1.2", "--tilts", "12",
                                 "--epochs", "60", "--out", str(out / "malik_cspbbr3"))),
        *(step for name in models[1:] for step in refinements[name]),
        ("scaling", script("scaling.py", "--out", str(out / "scaling"))),
        ("epoch", script("epoch.py", "--json", str(out / "epoch.json"))),
        ("tilts", script("tilts.py")),
    ]


def source_version() -> str:
    """The commit the steps run from, with "+changes" when tracked files outside the results differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return commit + ("+changes" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="names of the steps to run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per step (default: none)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the steps that DIR/run_all.json records as done (exit status 0) and run the rest")
    args = parser.parse_args()
    out = args.out or HERE / "results" / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    record = {"mode": "quick" if args.quick else "full", "python": sys.version.split()[0], "steps": []}
    if args.resume and (out / "run_all.json").exists():
        record["steps"] = [s for s in json.loads((out / "run_all.json").read_text())["steps"] if s["status"] == 0]
    done = {s["name"] for s in record["steps"]}
    plan = [s for s in steps(args.quick, out) if (args.only is None or s[0] in args.only) and s[0] not in done]
    version = source_version()
    begin = time.perf_counter()
    for name, arguments in plan:
        command = [sys.executable, "-u", *arguments]  # unbuffered, so that DIR/<step>.log follows a long step
        print(f"[{time.perf_counter() - begin:6.0f} s] {name}: {' '.join(arguments)}", flush=True)
        start = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            try:
                status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                        timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                status = "timeout"
        seconds = time.perf_counter() - start
        record["steps"].append({"name": name, "command": " ".join(["python", *[str(pathlib.Path(a).relative_to(ROOT))
                                                                              if a.startswith(str(ROOT)) else a
                                                                              for a in arguments]]),
                                "status": status, "seconds": round(seconds, 1), "log": f"{name}.log",
                                "commit": version, "finished": time.strftime("%Y-%m-%d %H:%M")})
        print(f"          {'ok' if status == 0 else f'FAILED ({status})'} in {seconds:.0f} s", flush=True)
        (out / "run_all.json").write_text(json.dumps(record, indent=1))
    failed = [s["name"] for s in record["steps"] if s["status"] != 0]
    print(f"done in {time.perf_counter() - begin:.0f} s; {len(record['steps']) - len(failed)} of "
          f"{len(record['steps'])} steps ok ({len(done)} kept from an earlier run)"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; results in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
