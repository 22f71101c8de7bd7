"""Weights in the diffusers / transformers folder layout: config.json plus safetensors, single or sharded.

    config = read_config(folder)                       # config.json as a dict
    model = build_module(lambda: Model(cfg), dtype, device)   # params allocated on `device`, never on CPU first
    load_weights(model, load_state_dict(folder), "transformer")   # strict: names must match exactly
    # or, for benchmarks without a checkpoint:
    init_dummy_weights(model, seed=0)

Checkpoint keys equal module names. Where a model fuses several checkpoint tensors into one parameter
(q/k/v -> qkv, gate/up), the fusion is declared once as a `fuse_table` passed to `load_weights`:

    {"attn.to_qkv.weight": ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight")}

Every key `P + source` (P any module prefix, matched at a dot boundary) is concatenated along dim 0 (the
output-feature dim of a Linear's weight and bias) into `P + target`; a target with one source is a rename.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file

CONFIG_NAME = "config.json"
_SHOW_KEYS = 5  # keys named in an error message; the rest are counted


def _name_keys(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW_KEYS])
    more = f" (and {len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
    return f"{shown}{more}"


def read_config(folder: str | os.PathLike) -> dict:
    """Returns `folder/config.json` as a dict; a missing or unreadable file is a one-line ValueError."""
    path = os.path.join(os.fspath(folder), CONFIG_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"no {CONFIG_NAME} in {folder!r}: a diffusers component folder needs one")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path!r}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} holds a {type(config).__name__}, expected a JSON object")
    return config


def _weight_files(folder: str) -> list[str]:
    """The safetensors files of `folder`: the shards named by the one *.safetensors.index.json, or the
    single *.safetensors file."""
    names = sorted(os.listdir(folder))
    indexes = [n for n in names if n.endswith(".safetensors.index.json")]
    if len(indexes) > 1:
        raise ValueError(f"{folder!r} has {len(indexes)} safetensors index files {indexes}: expected at most one")
    if indexes:
        index_path = os.path.join(folder, indexes[0])
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read the weight_map of {index_path!r}: {e!r}") from None
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if absent:
            raise ValueError(f"{index_path!r} names shard files that are not there: {_name_keys(absent)}")
        return [os.path.join(folder, s) for s in shards]
    singles = [n for n in names if n.endswith(".safetensors")]
    if len(singles) != 1:
        raise ValueError(
            f"{folder!r} has {len(singles)} *.safetensors files {singles[:_SHOW_KEYS]} and no index: "
            "expected exactly one file, or shards with a *.safetensors.index.json"
        )
    return [os.path.join(folder, singles[0])]


def load_state_dict(folder: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of the safetensors weights in `folder` (single file or index + shards), loaded onto
    `device` in their stored dtype. A key stored in two shards is an error."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"weights folder {folder!r} does not exist")
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        shard = load_file(path, device=str(device))
        twice = state.keys() & shard.keys()
        if twice:
            raise ValueError(f"{path!r} repeats keys already loaded from another shard: {_name_keys(list(twice))}")
        state.update(shard)
    return state


def _suffix_prefix(key: str, suffix: str) -> str | None:
    """The module prefix P with key == P + suffix (P empty or ending in '.'), else None."""
    if key == suffix:
        return ""
    if key.endswith("." + suffix):
        return key[: -len(suffix)]
    return None


def apply_fuse_table(
    state_dict: Mapping[str, torch.Tensor], fuse_table: Mapping[str, Sequence[str]], component: str
) -> dict[str, torch.Tensor]:
    """Returns a new dict where, for each target -> sources rule and each prefix P holding P + sources[0],
    the tensors P + sources are replaced by one tensor P + target = cat(sources, dim=0)."""
    out = dict(state_dict)
    for target, sources in fuse_table.items():
        if not sources:
            raise ValueError(f"{component}: fuse_table entry {target!r} has no source keys")
        prefixes = [p for p in (_suffix_prefix(k, sources[0]) for k in state_dict) if p is not None]
        for prefix in prefixes:
            names = [prefix + s for s in sources]
            absent = [n for n in names if n not in out]
            if absent:
                raise ValueError(f"{component}: cannot fuse into {prefix + target!r}: missing {_name_keys(absent)}")
            parts = [out.pop(n) for n in names]
            out[prefix + target] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return out


def load_weights(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    component: str,
    fuse_table: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Copies `state_dict` into `module`'s parameters and persistent buffers, casting to their dtype and
    device. Strict: any missing, unexpected or mis-shaped key raises one ValueError naming `component`
    and the keys (the first few, and the count)."""
    if fuse_table:
        state_dict = apply_fuse_table(state_dict, fuse_table, component)
    expected = module.state_dict(keep_vars=True)
    problems = []
    missing = [k for k in expected if k not in state_dict]
    if missing:
        problems.append(f"{len(missing)} missing keys: {_name_keys(missing)}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_name_keys(unexpected)}")
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(t.shape)}"
        for k, t in expected.items()
        if k in state_dict and state_dict[k].shape != t.shape
    ]
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped keys: {_name_keys(mis_shaped)}")
    if problems:
        raise ValueError(f"{component}: checkpoint does not match the model: " + "; ".join(problems))
    on_meta = [k for k, t in expected.items() if t.is_meta]
    if on_meta:
        raise ValueError(f"{component}: {len(on_meta)} tensors are on the meta device ({_name_keys(on_meta)}): "
                         "materialize the module first (build_module)")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state_dict[key])


def init_dummy_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Fills every parameter with random values of a sensible scale, in place, on its own device:
    weights with >= 2 dims (Linear, Conv, Embedding) ~ N(0, 1/fan_in), fan_in = prod(shape[1:]);
    1-dim `weight`s (norm scales) = 1; other 1-dim parameters (biases) = 0. Deterministic per seed and
    device; buffers are left as the module built them."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.is_meta:
                raise ValueError(f"parameter {name!r} is on the meta device: materialize it first (build_module)")
            if param.dim() >= 2:
                if param.device not in generators:
                    generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
                fan_in = param[0].numel()
                param.normal_(0.0, fan_in**-0.5, generator=generators[param.device])
            elif name.rsplit(".", 1)[-1] == "weight":
                param.fill_(1.0)
            else:
                param.zero_()


def init_dummy_weights_through(unfused: torch.nn.Module, views: Mapping[str, torch.Tensor], seed: int = 0) -> None:
    """init_dummy_weights of an UNFUSED model (built on meta) written into a fused model's tensors: each of its
    parameters becomes the view of the same checkpoint key (`views`, e.g. flux_checkpoint_state_dict), so the
    fused model gets exactly the numbers the unfused one would (same seed)."""
    for name, _ in list(unfused.named_parameters()):
        owner, _, leaf = name.rpartition(".")  # owner "" = the model itself
        unfused.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(views[name], requires_grad=False)
    init_dummy_weights(unfused, seed=seed)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While active, every nn.Parameter registered goes to the meta device (no memory, no init cost);
    buffers are built for real, so values computed in __init__ (position ids, frequencies) survive.
    It swaps nn.Module.register_parameter process-wide for the duration: build one module at a time."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_module(
    factory: Callable[[], torch.nn.Module], dtype: torch.dtype, device: str | torch.device
) -> torch.nn.Module:
    """Calls `factory()` with parameters on the meta device, then allocates each parameter (uninitialized,
    floating ones in `dtype`) directly on `device` and moves buffers there. Tied parameters stay tied.
    The result is in eval mode without gradients; fill it with load_weights or init_dummy_weights."""
    with _parameters_on_meta():
        module = factory()
    device = torch.device(device)
    made: dict[int, torch.nn.Parameter] = {}
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None:
                continue
            if id(param) not in made:
                new_dtype = dtype if param.is_floating_point() else param.dtype
                made[id(param)] = torch.nn.Parameter(
                    torch.empty_like(param, dtype=new_dtype, device=device), requires_grad=False
                )
            sub._parameters[name] = made[id(param)]
        for name, buf in sub._buffers.items():
            if buf is not None:
                sub._buffers[name] = buf.to(device)
    return module.eval()
