"""``--config run.yaml``: a command's options from a file, validated against the parser itself.

Keys are the long option names (``lr``, ``micro-batch-size`` or ``micro_batch_size``). Unknown
keys and values of the wrong type are errors naming the file, the key and what was expected,
raised before any model loads. Command-line options override the file. The resolved options
are saved as ``config.yaml`` in the run's output directory, so ``--config RUN/config.yaml``
repeats the run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..util.errors import DataError, LetheError
from ..util.io import read_user_text, write_text
from ..util.validation import Range

SKIP = {"help", "config", "command", "quiet", "verbose", "_commands"}


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in SKIP and a.option_strings or a.dest in ("runs",)}


def _typename(action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "true or false"
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    if isinstance(action.type, Range):
        return action.type.expected()
    return {int: "an integer", float: "a number", None: "a string", str: "a string"}.get(action.type, "a value")


def _convert(path, key, action, value):
    if isinstance(action, argparse._StoreTrueAction):
        if value is None and action.default is None:  # a flag whose absence means "as the convention says"
            return None
        if not isinstance(value, bool):
            raise LetheError(f"{path}: key '{key}' expects true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(action, argparse._AppendAction):  # repeatable NAME=VALUE options: a list or a mapping
        if isinstance(value, dict):
            return [f"{k}={v}" for k, v in value.items()]
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            raise LetheError(f"{path}: key '{key}' expects NAME=VALUE strings or a mapping, got {value!r}")
        return [str(v) for v in items]
    if isinstance(value, list) and action.dest in ("methods", "target_modules"):
        value = ",".join(map(str, value))
    if isinstance(action.type, Range):  # the option's declared range, as on the command line
        if isinstance(value, str):  # YAML reads 1e-5 without a dot as a string
            try:
                value = action.type(value)
            except argparse.ArgumentTypeError:
                raise LetheError(f"{path}: key '{key}' expects {action.type.expected()}, got {value!r}") from None
        try:
            value = action.type.check(f"{path}: key '{key}'", value)
        except LetheError as e:
            raise LetheError(str(e).replace(": expected", " expects", 1)) from None
    elif action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LetheError(f"{path}: key '{key}' expects an integer, got {value!r}")
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LetheError(f"{path}: key '{key}' expects a number, got {value!r}")
        value = float(value)
    elif isinstance(value, (dict, list)):
        raise LetheError(f"{path}: key '{key}' expects {_typename(action)}, got {type(value).__name__}")
    else:
        value = str(value) if not isinstance(value, (int, float)) or action.type is None else value
        if action.type is None:
            value = str(value)
    if action.choices and value not in action.choices:
        raise LetheError(f"{path}: key '{key}' expects {_typename(action)}, got {value!r}")
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (plain YAML keeps the last one silently)."""


def _unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise LetheError(f"key '{key}' appears twice (line {key_node.start_mark.line + 1}); give each option once")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """Validated defaults for ``parser`` from a YAML file."""
    path = Path(path)
    if not path.exists():
        raise LetheError(f"{path}: config file not found")
    try:
        data = yaml.load(read_user_text(path), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise LetheError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    except RecursionError:
        raise LetheError(f"{path}: nested too deeply to be a config of option: value") from None
    except DataError:
        raise
    except LetheError as e:
        raise LetheError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise LetheError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    actions = _actions(parser)
    out = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise LetheError(f"{path}: unknown key '{key}'; valid keys: "
                             f"{', '.join(sorted(d.replace('_', '-') for d in actions))}")
        out[dest] = _convert(path, key, actions[dest], value)
    return out


def save_resolved(args: argparse.Namespace, parser: argparse.ArgumentParser, directory: str | Path) -> Path:
    actions = _actions(parser)
    resolved = {d.replace("_", "-"): getattr(args, d) for d in actions if hasattr(args, d)}
    return write_text(Path(directory) / "config.yaml",
                      f"# lethe {args.command}: resolved options (repeat with --config this-file)\n"
                      + yaml.safe_dump(resolved, sort_keys=True, allow_unicode=True))
