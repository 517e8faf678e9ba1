"""``python -m fedsim``: the Hydra command line (``--help``, ``--cfg job``, ``-m`` sweeps)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from fedsim.config import output_dir_problem, unknown_group_option, unknown_key, validate
from fedsim.extras import extra_hint
from fedsim.params import ParamError
from fedsim.results import to_json
from fedsim.run_summary import ATTACK_KEYS, headline


REQUIRED_HINTS = {
    "dataset.root": "the folder holding the dataset's files in their usual on-disk format (fedsim never downloads "
                    "data), e.g. dataset.root=/data; or use an embedded dataset: dataset=mnist5k or dataset=digits",
}


def fail(message: str) -> None:
    """Stop with one clear line on stderr (exit code 2), before any work."""
    print(f"fedsim: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@hydra.main(version_base=None, config_path="pkg://fedsim.conf", config_name="config")
def run(cfg: DictConfig) -> float | None:
    """Run one simulation from the composed config; returns the final test accuracy."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        validate(resolved)
    except MissingMandatoryValue as exc:
        fail(f"{exc.full_key}=???: must be set; {REQUIRED_HINTS.get(exc.full_key, 'this option has no default')}")
    except ParamError as exc:
        fail(str(exc))
    from fedsim.checkpoint import CheckpointError  # heavy imports only once the config is known good
    from fedsim.engine.context import RunContext, build_components, check_fit
    from fedsim.engine.replies import TooFewClients
    from fedsim.engine.simulation import simulate

    try:  # dataset, partition and components: bad values fail here, before training
        ctx = RunContext.from_config(resolved)
        parts = build_components(resolved)
        check_fit(parts, ctx)
    except (ValueError, FileNotFoundError, TypeError, InstantiationException) as exc:
        cause = exc
        while cause.__cause__ is not None and not isinstance(cause, ParamError):
            cause = cause.__cause__
        fail(str(cause).strip().splitlines()[-1] + extra_hint(cause))
    resume = resolved["resume"]
    out_dir = Path(resume) if isinstance(resume, str) and resume != "auto" else Path(HydraConfig.get().runtime.output_dir)
    if not resume:  # a resumed run's folder is rewritten only once its checkpoint has been accepted
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    try:
        summary = simulate(resolved, out_dir, progress=bool(resolved["progress"]), ctx=ctx, parts=parts)
    except (CheckpointError, TooFewClients, ParamError) as exc:  # ParamError: a check that needs the model (HyperFL's head)
        fail(str(exc))
    if resume:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    task = headline(summary)
    print(
        f"fedsim: {resolved['strategy']['_target_'].rsplit('.', 1)[-1]} on {summary['backend']}: "
        f"final test accuracy {summary['final_test_acc']:.4f} after {summary['rounds']} rounds "
        f"({summary['wall_s']:.1f} s){'; ' + task if task else ''}; results in {out_dir}"
    )
    shown = ("final_test_acc", "best_test_acc", "bytes_up_total", "bytes_down_total", "compression_ratio", "dp_epsilon", "detection", "privacy")
    print(to_json({k: summary[k] for k in summary if k in shown or k.endswith(ATTACK_KEYS)}))
    return summary["final_test_acc"]


def main() -> None:
    """Entry point: fedsim's own --help; reject unknown component names and an unusable output folder in
    one line; then hand over to Hydra."""
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        from fedsim.cli_help import help_text

        print(help_text())
        raise SystemExit(0)
    problem = unknown_group_option(sys.argv[1:]) or unknown_key(sys.argv[1:]) or output_dir_problem(sys.argv[1:])
    if problem:
        fail(problem)
    run()


if __name__ == "__main__":
    main()
