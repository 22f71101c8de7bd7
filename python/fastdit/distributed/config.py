"""How the GPUs of one host are split: Ulysses x ring sequence parallel, CFG-parallel, text-encoder TP.

    num_gpus == ulysses_degree * ring_degree * (2 if cfg_parallel else 1)

Ranks are laid out cfg-major, then ring, then Ulysses (Ulysses peers are neighbours, so the all-to-all,
the heaviest collective, stays on the closest links):

    rank = cfg_rank * (ring_degree * ulysses_degree) + ring_rank * ulysses_degree + ulysses_rank

The sequence-parallel (SP) rank `ring_rank * ulysses_degree + ulysses_rank` is also the index of the
image-token chunk a rank holds. Independently of that layout, the T5/UMT5 text encoder runs tensor-parallel
over groups of tp_size consecutive ranks (tp_rank = rank % tp_size; tp_size divides num_gpus and the
encoder's heads: tp.py). Validation happens once, at the edge (CLI, server, API), with one-line
errors naming the numbers and what is allowed.
"""

from __future__ import annotations

import dataclasses


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    num_gpus: int = 1
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False
    tp_size: int = 1

    def __post_init__(self):
        for name in ("num_gpus", "ulysses_degree", "ring_degree", "tp_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig: {name}={value!r} must be an integer >= 1")
        if self.num_gpus % self.tp_size:
            raise ValueError(
                f"ParallelConfig: tp_size={self.tp_size} must divide num_gpus={self.num_gpus} (text-encoder groups of "
                f"tp_size consecutive ranks); allowed tp sizes: {_divisors(self.num_gpus)}"
            )
        if self.world_size != self.num_gpus:
            raise ValueError(
                f"ParallelConfig: ulysses_degree * ring_degree * cfg = {self.ulysses_degree} * {self.ring_degree} * "
                f"{self.cfg_degree} = {self.world_size} must equal num_gpus={self.num_gpus}; with num_gpus={self.num_gpus}"
                f"{' and cfg-parallel' if self.cfg_parallel else ''} the allowed (ulysses, ring) pairs are "
                f"{self.legal_sp_degrees(self.num_gpus, self.cfg_parallel) or 'none (num_gpus must be even)'}"
            )

    @property
    def cfg_degree(self) -> int:
        return 2 if self.cfg_parallel else 1

    @property
    def sp_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def world_size(self) -> int:
        return self.sp_degree * self.cfg_degree

    @staticmethod
    def legal_sp_degrees(num_gpus: int, cfg_parallel: bool = False) -> list[tuple[int, int]]:
        """Every (ulysses_degree, ring_degree) that fills `num_gpus` GPUs."""
        cfg = 2 if cfg_parallel else 1
        if num_gpus % cfg:
            return []
        return [(u, num_gpus // cfg // u) for u in _divisors(num_gpus // cfg)]

    @classmethod
    def from_flags(
        cls,
        num_gpus: int = 1,
        ulysses_degree: int | None = None,
        ring_degree: int | None = None,
        cfg_parallel: bool = False,
        tp_size: int = 1,
    ) -> "ParallelConfig":
        """The CLI/server defaults: a degree left out (None) takes the GPUs the others leave.

        `--num-gpus 4` alone is Ulysses 4; `--num-gpus 4 --ring-degree 2` is Ulysses 2 x ring 2;
        `--num-gpus 4 --ulysses-degree 1` is ring 4.
        """
        cfg = 2 if cfg_parallel else 1

        def fill(other: int) -> int:
            # An illegal combination falls through to 1, and __post_init__ names the legal ones.
            denom = cfg * other
            return num_gpus // denom if denom > 0 and num_gpus % denom == 0 else 1

        if ulysses_degree is None:
            ulysses_degree = fill(ring_degree or 1)
        if ring_degree is None:
            ring_degree = fill(ulysses_degree)
        return cls(num_gpus, ulysses_degree, ring_degree, cfg_parallel, tp_size)

    def check_model(self, num_heads: int, num_img_tokens: int | None = None, has_true_cfg: bool = True) -> None:
        """Checks the degrees against one model and request: heads split by Ulysses, tokens by U*R."""
        if num_heads % self.ulysses_degree:
            allowed = [d for d in _divisors(num_heads) if d <= max(self.num_gpus, 1)]
            raise ValueError(
                f"ParallelConfig: ulysses_degree={self.ulysses_degree} must divide the model's {num_heads} attention "
                f"heads; allowed ulysses degrees: {allowed}"
            )
        if num_img_tokens is not None and num_img_tokens % self.sp_degree:
            raise ValueError(
                f"ParallelConfig: {num_img_tokens} image tokens must divide by ulysses_degree * ring_degree = "
                f"{self.sp_degree}; choose a size whose token count divides by {self.sp_degree}, or smaller degrees"
            )
        if self.cfg_parallel and not has_true_cfg:
            raise ValueError(
                "ParallelConfig: cfg_parallel needs a model with true classifier-free guidance (two branches); "
                "this model has one branch: drop --enable-cfg-parallel"
            )

    def check_text_encoder(self, num_heads: int, name: str) -> None:
        """Checks tp_size against one text encoder: its attention heads are split evenly over the TP group."""
        if num_heads % self.tp_size:
            allowed = [d for d in _divisors(num_heads) if self.num_gpus % d == 0]
            raise ValueError(
                f"ParallelConfig: tp_size={self.tp_size} must divide the {num_heads} attention heads of {name}; "
                f"allowed tp sizes with num_gpus={self.num_gpus}: {allowed}"
            )

    def rank_coords(self, rank: int) -> tuple[int, int, int]:
        """(cfg_rank, ring_rank, ulysses_rank) of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"ParallelConfig: rank={rank} must be in [0, {self.world_size})")
        u = self.ulysses_degree
        r = self.ring_degree
        return rank // (u * r), (rank // u) % r, rank % u

    def rank_of(self, cfg_rank: int, ring_rank: int, ulysses_rank: int) -> int:
        return cfg_rank * self.sp_degree + ring_rank * self.ulysses_degree + ulysses_rank


def add_parallel_flags(parser) -> None:
    """The multi-GPU flags shared by `python -m fastdit.generate` and `python -m fastdit.serve`."""
    group = parser.add_argument_group("multi-GPU (one process per GPU)")
    group.add_argument("--num-gpus", type=int, default=1, help="GPUs (processes) to use (default 1)")
    group.add_argument("--ulysses-degree", type=int, default=None,
                       help="Ulysses sequence-parallel degree (default: the GPUs the other degrees leave)")
    group.add_argument("--ring-degree", type=int, default=None, help="ring-attention degree (default 1)")
    group.add_argument("--enable-cfg-parallel", action="store_true",
                       help="run the conditional and unconditional CFG branches on two halves of the GPUs")
    group.add_argument("--tp-size", type=int, default=1, help="tensor-parallel size of the T5/UMT5 text encoders: groups of T consecutive GPUs each "
                            "split the encoder's heads and FFN (T divides --num-gpus and the heads; default 1)")


def config_from_flags(args) -> ParallelConfig:
    """The validated ParallelConfig of parsed `add_parallel_flags` arguments (ValueError: one line)."""
    return ParallelConfig.from_flags(
        args.num_gpus, args.ulysses_degree, args.ring_degree, args.enable_cfg_parallel, args.tp_size
    )
