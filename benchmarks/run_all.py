"""Run the evidence suite: every benchmark script, one after another, results as JSON.

    python benchmarks/run_all.py --quick [--out DIR]    # about 15 minutes on 2 cores
    python benchmarks/run_all.py [--out DIR]            # the full suite (many hours)

Each step runs as its own process (one at a time: the machine's cores belong to it), its output
goes to ``DIR/<step>.log`` and its JSON and figures into ``DIR/<step>/``; ``DIR/run_all.json``
lists every step with its command, exit status and wall time. A failing step is reported and
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
            ("quartz_refine_quick", script("quartz_refine.py", "--tilts", "12", "--epochs", "25", "--polish-steps", "0",
                                           "--out", str(out / "quartz_refine_quick"))),
            ("quartz_epoch", script("quartz_epoch.py", "--tilts", "14", "--repeats", "1", "--json",
                                    str(out / "quartz_epoch.json"))),
        ]
    common = ["--tilts", "42"]
    return [
        ("quartz_epoch", script("quartz_epoch.py", "--json", str(out / "quartz_epoch.json"))),
        ("quartz_refine_elastic", script("quartz_refine.py", *common, "--out", str(out / "quartz_refine_elastic"))),
        ("quartz_refine_absorption", script("quartz_refine.py", *common, "--absorption", "0.05",
                                            "--out", str(out / "quartz_refine_absorption"))),
        ("quartz_refine_kinematic", script("quartz_refine.py", *common, "--kinematic",
                                           "--out", str(out / "quartz_refine_kinematic"))),
        ("quartz_refine_inverted", script("quartz_refine.py", *common, "--invert",
                                          "--out", str(out / "quartz_refine_inverted"))),
        ("quartz_refine_perframe", script("quartz_refine.py", *common, "--thickness-model", "perframe",
                                          "--out", str(out / "quartz_refine_perframe"))),
        ("quartz_refine_neural", script("quartz_refine.py", *common, "--thickness-model", "neural",
                                        "--out", str(out / "quartz_refine_neural"))),
        ("scaling", script("scaling.py", "--out", str(out / "scaling"))),
        ("recovery_quartz", script("recovery.py", "--structure", "quartz", "--out", str(out / "recovery_quartz"))),
        ("recovery_cspbbr3", script("recovery.py", "--structure", "cspbbr3", "--perturbations", "0.16",
                                    "--out", str(out / "recovery_cspbbr3"))),
        ("malik_quartz", script("recovery.py", "--malik", "quartz", "--out", str(out / "malik_quartz"))),
        ("malik_cspbbr3", script("recovery.py", "--malik", "cspbbr3", "--out", str(out / "malik_cspbbr3"))),
        ("epoch", script("epoch.py", "--json", str(out / "epoch.json"))),
        ("tilts", script("tilts.py")),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="names of the steps to run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per step (default: none)")
    args = parser.parse_args()
    out = args.out or HERE / "results" / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    plan = [s for s in steps(args.quick, out) if args.only is None or s[0] in args.only]
    record = {"mode": "quick" if args.quick else "full", "python": sys.version.split()[0], "steps": []}
    begin = time.perf_counter()
    for name, arguments in plan:
        command = [sys.executable, *arguments]
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
                                "status": status, "seconds": round(seconds, 1), "log": f"{name}.log"})
        print(f"          {'ok' if status == 0 else f'FAILED ({status})'} in {seconds:.0f} s", flush=True)
        (out / "run_all.json").write_text(json.dumps(record, indent=1))
    failed = [s["name"] for s in record["steps"] if s["status"] != 0]
    print(f"done in {time.perf_counter() - begin:.0f} s; {len(plan) - len(failed)} of {len(plan)} steps ok"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; results in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
