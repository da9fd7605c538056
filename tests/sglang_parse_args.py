"""Parse command lines with SGLang's own ``prepare_server_args`` (run by .venv-sglang's Python).

stdin: a JSON list of argument lists (what follows ``python3 -m sglang.launch_server``).
stdout: a JSON list, per command line, of the parsed ``ServerArgs`` fields the chart sets,
or ``{"error": ...}`` where SGLang's parser refused it; plus SGLang's own choices for the
values the chart's schema restricts.

One stand-in: ``sglang.srt.utils.common`` imports ``torchvision.io.decode_jpeg`` at module
level (for image inputs). PyPI's torchvision cannot load beside the CPU build of torch
(its operators are built against CUDA torch), so that one function is stood in for;
nothing in argument parsing calls it.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import io
import json
import sys
import types
import warnings

FIELDS = ("model_path", "is_embedding", "served_model_name", "host", "port", "enable_metrics", "tp_size", "dtype",
          "mem_fraction_static", "context_length", "attention_backend", "api_key", "max_running_requests")


def _stand_in_for_torchvision() -> None:
    package = types.ModuleType("torchvision")
    package.__path__ = []
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    image_io = types.ModuleType("torchvision.io")
    image_io.__spec__ = importlib.machinery.ModuleSpec("torchvision.io", None)

    def decode_jpeg(*args, **kwargs):
        raise RuntimeError("torchvision is not installed in the argument-parser venv")

    image_io.decode_jpeg = decode_jpeg
    package.io = image_io
    sys.modules.update({"torchvision": package, "torchvision.io": image_io})


def main() -> None:
    warnings.simplefilter("ignore")
    _stand_in_for_torchvision()
    with contextlib.redirect_stdout(io.StringIO()):
        import sglang
        from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES
        from sglang.srt.server_args import ServerArgs, prepare_server_args

    results = []
    for argv in json.load(sys.stdin):
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as errors:
                parsed = prepare_server_args(argv)
            results.append({name: getattr(parsed, name) for name in FIELDS})
        except SystemExit:
            results.append({"error": errors.getvalue().strip().splitlines()[-1]})
        except Exception as error:  # ServerArgs' own checks raise ValueError and the like
            results.append({"error": f"{type(error).__name__}: {error}"})
    import argparse

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    dtype_choices = next(a.choices for a in parser._actions if "--dtype" in a.option_strings)
    print(json.dumps({"version": sglang.__version__, "results": results,
                      "choices": {"dtype": list(dtype_choices), "attention_backend": list(ATTENTION_BACKEND_CHOICES)}}))


if __name__ == "__main__":
    main()
