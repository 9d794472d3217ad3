"""`convnet-service serve`: run the service under Gunicorn with the project's config file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("gunicorn.conf.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="convnet-service", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service under Gunicorn")
    serve.add_argument(
        "--bind", default="127.0.0.1:8000", help="address:port (default: %(default)s)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per usable core, within a container's CPU quota)",
    )
    serve.add_argument(
        "--worker-class",
        choices=["sync", "gthread"],
        default=None,
        help="sync: one request at a time per worker, behind a buffering proxy (default); "
        "gthread: threads per worker (the default with CONVNET_BATCHING=1)",
    )
    serve.add_argument(
        "--threads", type=int, default=None, help="threads per gthread worker (default: 4)"
    )
    serve.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="folder of <name>/<version>/ SavedModels (default: ./models)",
    )
    prepare = sub.add_parser(
        "prepare-engines", help="convert every model to its LiteRT engine now (e.g. at image build)"
    )
    prepare.add_argument("--models-dir", type=Path, default=None)
    prepare.add_argument(
        "--all-versions",
        action="store_true",
        help="every version, not only the served ones (the versioned routes load the others on demand)",
    )
    args = p.parse_args(argv)

    if args.command == "prepare-engines":
        from service.config import Settings
        from service.engines import prepare as prepare_engines
        from service.registry import find_versions
        from service.versions import on_disk

        settings = Settings.from_env(**({"models_dir": args.models_dir} if args.models_dir else {}))
        paths = find_versions(settings.models_dir)
        if args.all_versions:
            paths = {
                f"{name}/{number}": path
                for name in paths
                for number, path in on_disk(settings.models_dir, name).items()
            }
        for name, path in prepare_engines(paths, settings.engine_cache).items():
            print(f"{name}: {path}")
        return 0

    os.environ["GUNICORN_BIND"] = args.bind
    if args.workers:
        os.environ["GUNICORN_WORKERS"] = str(args.workers)
    if args.worker_class:
        os.environ["GUNICORN_WORKER_CLASS"] = args.worker_class
    if args.threads:
        os.environ["GUNICORN_THREADS"] = str(args.threads)
    if args.models_dir:
        os.environ["CONVNET_MODELS_DIR"] = str(args.models_dir.resolve())
    from service.config import Settings

    try:  # the config file reads these too, but would answer a typo with a traceback
        Settings.from_env()
    except ValueError as exc:
        p.error(str(exc))
    # Exec Gunicorn itself, so signals (SIGTERM, SIGHUP) reach its arbiter directly.
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", str(CONFIG)]
    os.execv(sys.executable, gunicorn)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
