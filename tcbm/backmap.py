"""Autoregressive backmapping of CG trajectories (paper §2.4), batched over trajectories and samples.

ÂA^t = decoder(CG^t, ÂA^{t-1}, z) with z from the model's GMM (or the N(0, I) prior).  Frame 0 is
seeded from the training frame whose CG is closest to CG^0 (RMSD after superposition): its preceding
all-atom frame(s) are superposed onto CG^0.  All rollouts of a group (inputs × samples) advance together,
one batched decoder call per time step, on the model's device; finished chunks of frames stream to disk.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mdtraj as md
import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from tcbm.artifact import BackmapModel
from tcbm.fingerprint import combined, differences, digest
from tcbm.geometry import aligned_rmsd, superpose
from tcbm.io import atomic_path, check_finite, expand_paths, load_trajectory
from tcbm.latent import LatentSampler
from tcbm.refine import RefinementSettings, Refiner
from tcbm.resume import RolloutProgress
from tcbm.rollout import check_autocast, roll
from tcbm.stereo import StereoKeeper
from tcbm.writers import TrajectoryWriter, check_format


def pair_distances(x: torch.Tensor) -> torch.Tensor:
    """Rotation-invariant features (..., n·(n−1)/2): all pairwise distances of ``x`` (..., n, 3)."""
    i, j = torch.triu_indices(x.shape[-2], x.shape[-2], 1, device=x.device)
    return (x[..., i, :] - x[..., j, :]).norm(dim=-1)


def nearest_library_frames(library_cg: torch.Tensor, cg: torch.Tensor, candidates: int = 128,
                           chunk: int = 1024) -> torch.Tensor:
    """Index of the library CG frame (L, n, 3) closest to each query (B, n, 3) by RMSD after optimal
    superposition.  The ``candidates`` frames nearest in pairwise-distance space are short-listed first,
    then ranked by exact aligned RMSD, so the cost is O(B·L) distances plus O(B·candidates) superpositions."""
    library_features = pair_distances(library_cg)
    k = min(candidates, len(library_cg))
    out = []
    for start in range(0, len(cg), chunk):
        query = cg[start:start + chunk]
        shortlist = torch.cdist(pair_distances(query), library_features).topk(k, largest=False).indices
        rmsd = aligned_rmsd(library_cg[shortlist], query[:, None])  # (b, k)
        out.append(shortlist.gather(1, rmsd.argmin(dim=1, keepdim=True))[:, 0])
    return torch.cat(out)


@dataclass
class RolloutSettings:
    """How to roll out: ``samples`` per input, latent source ``'gmm'`` or ``'prior'`` (the same N(0, I) for a
    model with a conditional prior, which maps it through p(z | condition)), ``latent_temperature`` (scales
    the latent draws' spread: 1 samples the fitted distribution, below 1 trades diversity for typical
    frames, 0 decodes the mean), ``seed``,
    ``batch_size`` (rollouts advanced together), ``chunk_frames`` (frames per disk write), autocast dtype,
    ``cuda_graph`` (replay each step as a captured CUDA graph on GPUs; ignored on CPU), the optional
    physics ``refinement`` of every frame (off unless ``refinement.steps`` > 0), ``rotor_hops`` (draw the
    CH3/NH3 rotamers from the model's rotor Markov chains, :mod:`tcbm.rotor_hops`, where it has them;
    false keeps the labels the network outputs), ``keep_stereo`` (put back every stereocentre the network
    mirrored or flattened with respect to the previous frame, :class:`~tcbm.stereo.StereoKeeper`, so each keeps
    the seed frame's handedness; false keeps the frames as decoded) and ``stiff_coordinates`` (draw the bond
    lengths, angles and narrow dihedrals of the CG-free atoms that hang off the rest of the molecule, and the
    CH3/NH3 hydrogens' dihedrals within their wells, afresh every frame, :mod:`tcbm.stiff_coordinates`; false
    keeps them as decoded)."""

    samples: int = 1
    latent: str = "gmm"
    latent_temperature: float = 1.0
    seed: int = 0
    batch_size: int = 256
    chunk_frames: int = 256
    autocast: str | None = None  # None | "bf16" | "fp16"
    cuda_graph: bool = True
    progress: bool = True
    refinement: RefinementSettings = field(default_factory=RefinementSettings)
    rotor_hops: bool = True
    keep_stereo: bool = True
    stiff_coordinates: bool = True

    def __post_init__(self) -> None:
        if self.latent not in ("gmm", "prior"):
            raise ValueError(f"latent must be 'gmm' or 'prior', got {self.latent!r}")
        if self.latent_temperature < 0:
            raise ValueError(f"latent_temperature must be >= 0, got {self.latent_temperature}")
        if self.samples < 1 or self.batch_size < 1 or self.chunk_frames < 1:
            raise ValueError("samples, batch_size and chunk_frames must be >= 1, got "
                             f"{self.samples}, {self.batch_size}, {self.chunk_frames}")
        check_autocast(self.autocast)
        switches = {"rotor_hops": self.rotor_hops, "keep_stereo": self.keep_stereo,
                    "stiff_coordinates": self.stiff_coordinates}
        wrong = {k: v for k, v in switches.items() if not isinstance(v, bool)}
        if wrong:
            raise ValueError(f"{', '.join(wrong)} must be true or false, got {', '.join(map(repr, wrong.values()))}")

    def fingerprint(self) -> dict:
        """The settings that shape the frames (not batch size, device, graphs or progress bars; the refinement's
        only when it is on)."""
        refinement = asdict(self.refinement) if self.refinement.steps else None
        return {"samples": self.samples, "latent": self.latent, "latent_temperature": self.latent_temperature,
                "seed": self.seed, "chunk_frames": self.chunk_frames,
                "autocast": self.autocast, "refinement": refinement, "rotor_hops": self.rotor_hops,
                "keep_stereo": self.keep_stereo, "stiff_coordinates": self.stiff_coordinates}


#: what a rollout does to the frames beyond its settings' say: raised when the same model, input and settings
#: start making different frames, so reruns recompute older outputs (1: stereocentres put back as in the
#: previous frame, :class:`~tcbm.stereo.StereoKeeper`; 2: stiff coordinates drawn, :mod:`tcbm.stiff_coordinates`;
#: 3: ... from regressors clipped to their fitted range; 4: stereocentres checked again after them; 5: rotor
#: hydrogens' dihedrals drawn within their wells; 6: constrained bonds set to their length, no noise; 7: the
#: regression's penalty chosen by cross-validation)
ROLLOUT_RECIPE = 7


@dataclass
class RandomStreams:
    """The per-row random generators of a rollout: latents, refinement noise, rotor hops and stiff coordinates
    (empty when off)."""

    latent: list[torch.Generator]
    refine: list[torch.Generator]
    rotor: list[torch.Generator]
    stiff: list[torch.Generator]

    NAMES = ("latent", "refine", "rotor", "stiff")

    def state(self) -> dict[str, list[torch.Tensor]]:
        return {name: [g.get_state() for g in getattr(self, name)] for name in self.NAMES}

    def restore(self, state: dict[str, list[torch.Tensor]]) -> None:
        for name in self.NAMES:
            for generator, saved in zip(getattr(self, name), state[name], strict=True):
                generator.set_state(saved)


class Backmapper:
    """Rolls CG trajectories out into all-atom trajectories with a trained :class:`BackmapModel`."""

    def __init__(self, model: BackmapModel, settings: RolloutSettings | None = None, device: str | None = None):
        self.settings = settings or RolloutSettings()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model
        self.network = model.network.to(self.device).eval()
        self.sampler = model.sampler if self.settings.latent == "gmm" else LatentSampler.prior(model.network.latent_dim)
        self.refiner = Refiner(model.system, self.settings.refinement).to(self.device) \
            if self.settings.refinement.steps else None
        self.rotor_hops = model.rotor_hops if self.settings.rotor_hops else None
        self.stiff = model.stiff_coordinates() if self.settings.stiff_coordinates else None
        stereo = StereoKeeper(model.system.topology, model.system.mapping.weights.any(0)) \
            if self.settings.keep_stereo else None
        self.stereo = stereo.to(self.device) if stereo is not None and len(stereo.rows) else None
        self.library_cg = torch.as_tensor(model.library.cg, device=self.device)
        self.library_prev = torch.as_tensor(model.library.aa_prev, device=self.device)
        self.graphs = {} if self.settings.cuda_graph else None  # captured rollout steps, by batch shape

    def seed_frames(self, cg0: torch.Tensor, structure: np.ndarray | None = None) -> torch.Tensor:
        """Previous frames (B, k, N, 3) for CG^0 (B, n, 3): the library frame(s) preceding the closest CG
        match, or a user ``structure`` (N, 3), superposed onto CG^0 through their CG beads."""
        k = max(self.network.history, 1)
        if structure is not None:
            prev = torch.as_tensor(structure, dtype=cg0.dtype, device=cg0.device).expand(len(cg0), k, -1, -1)
            prev_cg = self.model.system.mapping(prev[:, 0])
        else:
            index = nearest_library_frames(self.library_cg, cg0)
            prev = self.library_prev[index][:, :k]
            prev_cg = self.library_cg[index]
        return superpose(prev_cg, cg0, carry=prev.reshape(len(cg0), -1, 3)).reshape(prev.shape)

    def streams(self, keys: Sequence[tuple[object, int]]) -> RandomStreams:
        """One random stream per (input name, sample) for latents, refinement noise, rotor hops and stiff
        coordinates, so results depend neither on batching nor on which process handles an input."""

        def generators(stream: str) -> list[torch.Generator]:
            return [torch.Generator().manual_seed(zlib.crc32(f"{self.settings.seed}/{i}/{s}{stream}".encode()))
                    for i, s in keys]

        return RandomStreams(generators(""), generators("/refine") if self.refiner is not None else [],
                             generators("/rotor") if self.rotor_hops is not None else [],
                             generators("/stiff") if self.stiff is not None else [])

    def _postprocess(self, streams: RandomStreams, corrected: torch.Tensor | None):
        """What :func:`roll` does to every decoded frame: mirrored stereocentres put back (counted per row
        into ``corrected`` (B,), if given), the physics refinement, the rotor hops, then the stiff coordinates
        (and the stereocentres checked again), each drawing its randomness from its own ``streams`` (None when all
        are off)."""
        if self.stereo is None and self.refiner is None and self.rotor_hops is None and self.stiff is None:
            return None
        shape = self.refiner.noise_shape() if self.refiner is not None else None
        n_groups = 0 if self.rotor_hops is None else len(self.rotor_hops.groups)

        def keep_stereo(frame: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
            if self.stereo is None:
                return frame
            frame, put_back = self.stereo(frame, previous[:, 0])
            if corrected is not None:
                corrected.add_(put_back.sum(1))
            return frame

        def postprocess(frame: torch.Tensor, cg: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
            frame = keep_stereo(frame, previous)
            if self.refiner is not None:
                noise = torch.stack([torch.randn(shape, generator=g) for g in streams.refine]).to(self.device)
                frame = keep_stereo(self.refiner(frame, cg, noise), previous)  # relaxed through a centre's plane
            if self.rotor_hops is not None:
                uniforms = torch.stack([torch.rand(n_groups, generator=g) for g in streams.rotor]).to(self.device)
                frame = self.rotor_hops.step(frame, previous[:, 0], uniforms)
            if self.stiff is not None:
                normals = torch.stack([torch.randn(self.stiff.n_draws, generator=g, dtype=torch.float64)
                                       for g in streams.stiff]).to(self.device)
                frame = keep_stereo(self.stiff.step(frame, previous[:, 0], normals), previous)  # placed across a plane
            return frame

        return postprocess

    @torch.inference_mode()
    def rollout(self, cg: torch.Tensor, keys: Sequence[tuple[object, int]], structure: np.ndarray | None = None,
                streams: RandomStreams | None = None, previous: torch.Tensor | None = None,
                corrected: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Roll out CG trajectories ``cg`` (B, T, n, 3) nm; yields chunks (B, t, N, 3) of all-atom frames.
        ``keys`` names each row (input name or index, sample index) for its random ``streams``; a rollout
        resumed mid-trajectory passes the streams' saved state and its ``previous`` frames (B, k, N, 3),
        newest first, instead of seeding frame 0.  ``corrected`` (B,) int64 on the rollout's device, if given,
        counts each row's stereocentres put back (:attr:`RolloutSettings.keep_stereo`)."""
        cg = cg.to(self.device, torch.float32)
        streams = streams or self.streams(keys)
        chunk = self.settings.chunk_frames

        def latents(start: int, stop: int) -> torch.Tensor:
            # always a full chunk of draws, so a row's latents do not depend on its group's length
            z = torch.stack([self.sampler.sample(chunk, g, self.settings.latent_temperature) for g in streams.latent])
            return z[:, : stop - start].to(self.device, torch.float32)

        if previous is None:
            previous = self.seed_frames(cg[:, 0], structure)
        yield from roll(self.network, cg, previous.to(self.device, torch.float32), latents, chunk,
                        self.settings.autocast, self._postprocess(streams, corrected), self.graphs)

    def backmap(self, cg_trajectories: Sequence[np.ndarray], structure: np.ndarray | None = None) -> list[np.ndarray]:
        """In-memory API: all-atom trajectories (T, N, 3) for each CG trajectory (T, n, 3) and sample,
        ordered input-major (input 0 samples 0..S-1, input 1, ...)."""
        results = []
        for group in self._groups(len(cg_trajectories)):
            cg, keys, lengths = self._stack(cg_trajectories, group)
            chunks = [c.cpu().numpy() for c in self.rollout(cg, keys, structure)]
            frames = np.concatenate(chunks, axis=1)
            results.extend(frames[row, :lengths[row]] for row in range(len(keys)))
        return results

    def _groups(self, n_inputs: int) -> list[list[int]]:
        per_group = max(1, self.settings.batch_size // self.settings.samples)
        return [list(range(i, min(i + per_group, n_inputs))) for i in range(0, n_inputs, per_group)]

    def _stack(self, cg_trajectories: Sequence[np.ndarray], group: Sequence[int]):
        """Batch tensor (rows, T_max, n, 3) padded with each input's last frame, row keys and lengths."""
        longest = max(len(cg_trajectories[i]) for i in group)
        rows, keys, lengths = [], [], []
        for i in group:
            traj = np.asarray(cg_trajectories[i], dtype=np.float32)
            padded = np.concatenate([traj, np.repeat(traj[-1:], longest - len(traj), axis=0)])
            for s in range(self.settings.samples):
                rows.append(padded)
                keys.append((i, s))
                lengths.append(len(traj))
        return torch.as_tensor(np.stack(rows)), keys, lengths


@dataclass
class CGInput:
    path: Path
    xyz: np.ndarray  # (T, n, 3) nm
    time: np.ndarray  # (T,) ps

    @property
    def digest(self) -> str:
        """Content hash of the CG frames and their times."""
        return digest(self.xyz, self.time)


def read_cg_input(path: Path, model: BackmapModel, cg_top: str | None, input_is_aa: bool, aa_top: str | None,
                  stride: int = 1) -> CGInput:
    """Load one CG input (or an all-atom one mapped with the model's own mapping) and validate it."""
    system = model.system
    if input_is_aa:
        traj = load_trajectory(path, aa_top if aa_top else system.topology, stride)
        system.check_atoms(traj.topology, str(path))
        xyz = system.mapping(traj.xyz)
    else:
        if cg_top is None and path.suffix not in (".h5", ".pdb"):
            raise ValueError(f"{path}: a CG topology is needed to read this format; pass cg_top=PDB")
        traj = load_trajectory(path, cg_top, stride)
        xyz = traj.xyz
    if xyz.shape[1] != system.n_beads:
        raise ValueError(f"{path}: {xyz.shape[1]} beads per frame, but the model's CG mapping has {system.n_beads}")
    check_finite(xyz, str(path))
    radius = np.linalg.norm(xyz - xyz.mean(axis=1, keepdims=True), axis=-1).max(axis=1)
    too_big = np.flatnonzero(radius > model.grid.max_radius)
    if too_big.size:
        raise ValueError(f"{path}: frame {too_big[0]} does not fit the model's voxel grid "
                         f"(bead {radius[too_big[0]]:.3f} nm from the centroid, limit {model.grid.max_radius:.3f} nm)")
    return CGInput(path, xyz.astype(np.float32), np.asarray(traj.time, dtype=np.float64))


def output_stems(inputs: Sequence[Path]) -> list[str]:
    """A unique name per input: its stem, prefixed by its folder's name where stems collide."""
    stems = [p.stem for p in inputs]
    return stems if len(set(stems)) == len(stems) else [f"{p.parent.name}_{p.stem}" for p in inputs]


def output_paths(stems: Sequence[str], out: Path, fmt: str, samples: int) -> list[list[Path]]:
    """Output file per input and sample: ``<out>/<stem>.<fmt>`` or ``<out>/<stem>_s<k>.<fmt>``."""
    return [[out / (f"{stem}.{fmt}" if samples == 1 else f"{stem}_s{k}.{fmt}") for k in range(samples)]
            for stem in stems]


def distributed_share(items: Sequence, rank: int | None = None, world: int | None = None) -> list:
    """This process's share of ``items`` under ``torchrun`` (RANK/WORLD_SIZE env vars): every
    ``world``-th item from ``rank``; all items when not launched distributed."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    return list(items)[rank::world]


def backmap_paths(model: BackmapModel, inputs: Sequence[Path], out: str | Path, settings: RolloutSettings,
                  fmt: str = "xtc", cg_top: str | None = None, input_is_aa: bool = False, aa_top: str | None = None,
                  seed_structure: str | None = None, device: str | None = None, stride: int = 1) -> list[Path]:
    """Backmap files to ``out``: one all-atom trajectory per input and sample, plus ``topology.pdb`` and
    a ``<output>.json`` summary (frames, CG-consistency RMSD in nm, frames/s, grid overflow, and the
    fingerprint of what made it: model and input contents, settings, :data:`ROLLOUT_RECIPE`).  A rerun reuses
    an output only when its fingerprint matches and recomputes it otherwise, saying what changed; a group of
    rollouts killed mid-trajectory resumes from its last finished chunk."""
    check_format(fmt)
    backmapper = Backmapper(model, settings, device)  # validates the settings before anything is written
    out = Path(out)
    topology = model.system.topology
    structure = None
    if seed_structure is not None:
        seed = load_trajectory(seed_structure, None if Path(seed_structure).suffix == ".pdb" else topology)
        model.system.check_atoms(seed.topology, seed_structure)
        structure = seed.xyz[0]
    common = {"model": model.fingerprint(), "settings": settings.fingerprint(), "recipe": ROLLOUT_RECIPE,
              "stride": stride, "input_is_aa": input_is_aa,
              "seed_structure": None if structure is None else digest(structure)}
    inputs = list(inputs)
    stems = output_stems(inputs)
    paths = output_paths(stems, out, fmt, settings.samples)
    written = []
    for group in backmapper._groups(len(inputs)):
        cg_inputs = [read_cg_input(inputs[i], model, cg_top, input_is_aa, aa_top, stride) for i in group]
        if not written and int(os.environ.get("RANK", 0)) == 0:  # first inputs valid: the folder may be made
            with atomic_path(out / "topology.pdb") as tmp:  # (by one process of a torchrun job)
                model.system.reference_trajectory().save_pdb(str(tmp))
        fingerprints = [[{**common, "input": c.digest, "sample": s} for s in range(settings.samples)]
                        for c in cg_inputs]
        group_paths = [paths[i] for i in group]
        reasons = {p: stale_reasons(p, f) for ps, fs in zip(group_paths, fingerprints) for p, f in zip(ps, fs)}
        if not any(reasons.values()):
            written.extend(reasons)
            continue
        for path, why in reasons.items():
            if why and path.exists():
                print(f"recomputing {path}: {'; '.join(why)}")
        written.extend(_run_group(backmapper, cg_inputs, [stems[i] for i in group], group_paths, fingerprints,
                                  topology, structure))
    return written


def stale_reasons(path: Path, fingerprint: dict) -> list[str]:
    """Why ``path`` must be (re)computed: empty when it exists and its summary's fingerprint matches."""
    if not path.exists():
        return ["missing"]
    try:
        stored = json.loads(path.with_suffix(".json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        stored = None
    return differences(stored, fingerprint)


@dataclass
class GridOverflow:
    """Frames of one rollout with atoms beyond the voxel grid's usable half-width (their densities are
    truncated by the grid edge): how many, the first (frame, atom, excess in nm) and the largest excess."""

    frames: int = 0
    first: dict | None = None
    max_excess_nm: float = 0.0

    def update(self, excess: np.ndarray, offset: int) -> None:
        """``excess`` (t, N) nm beyond the limit for frames ``offset``.. (≤ 0 where inside)."""
        over = excess > 0
        bad = np.flatnonzero(over.any(axis=1))
        if bad.size:
            self.frames += int(bad.size)
            self.max_excess_nm = max(self.max_excess_nm, float(excess.max()))
            if self.first is None:
                atom = int(np.argmax(excess[bad[0]]))
                self.first = {"frame": offset + int(bad[0]), "atom": atom, "excess_nm": float(excess[bad[0], atom])}


def _run_group(backmapper: Backmapper, cg_inputs: list[CGInput], stems: list[str], paths: list[list[Path]],
               fingerprints: list[list[dict]], topology: md.Topology, structure: np.ndarray | None) -> list[Path]:
    settings, system = backmapper.settings, backmapper.model.system
    cg, _, lengths = backmapper._stack([c.xyz for c in cg_inputs], range(len(cg_inputs)))
    rows = [(g, s) for g in range(len(cg_inputs)) for s in range(settings.samples)]
    keys = [(stems[g], s) for g, s in rows]
    outputs = [paths[g][s] for g, s in rows]
    progress = RolloutProgress(outputs, combined(fingerprints[g][s] for g, s in rows), system.n_atoms)
    streams = backmapper.streams(keys)
    k = max(backmapper.network.history, 1)
    state = progress.load(min_frames=k)  # a resumed rollout needs k previous frames
    done, previous = 0, None
    sq_error, overflow, elapsed = np.zeros(len(rows)), [GridOverflow() for _ in rows], 0.0
    corrected = torch.zeros(len(rows), dtype=torch.int64, device=backmapper.device)  # stereocentres put back, per row
    if state is not None:
        done, previous, sq_error, elapsed = state["frames"], progress.previous(k), state["sq_error"], state["elapsed_s"]
        corrected = torch.as_tensor(state["stereo_corrections"], device=backmapper.device)
        overflow = [GridOverflow(**o) for o in state["overflow"]]
        streams.restore(state["streams"])
    limit = backmapper.model.grid.max_radius
    started = time.perf_counter() - elapsed
    with tqdm(total=cg.shape[1] * len(rows), initial=done * len(rows), unit="frame", unit_scale=True,
              desc=f"backmap {len(cg_inputs)} inputs x {settings.samples}", disable=not settings.progress) as bar:
        for chunk in backmapper.rollout(cg[:, done:], keys, structure, streams, previous, corrected):
            chunk_np = chunk.cpu().numpy()
            t = chunk_np.shape[1]
            cg_np = cg[:, done:done + t].numpy()
            progress.append(chunk_np)
            for r in range(len(rows)):
                keep = max(0, min(t, lengths[r] - done))
                frames = chunk_np[r, :keep]
                sq_error[r] += ((system.mapping(frames) - cg_np[r, :keep]) ** 2).sum(-1).mean(-1).sum()
                centred = frames - cg_np[r, :keep].mean(axis=1, keepdims=True)
                overflow[r].update(np.abs(centred).max(axis=-1) - limit, done)
            done += t
            progress.save({"frames": done, "streams": streams.state(), "sq_error": sq_error,
                           "overflow": [asdict(o) for o in overflow], "stereo_corrections": corrected.cpu(),
                           "elapsed_s": time.perf_counter() - started})
            bar.update(t * len(rows))
    elapsed = time.perf_counter() - started
    for r, (g, s) in enumerate(rows):
        _write_output(outputs[r], progress.frames(r)[:lengths[r]], cg_inputs[g].time, topology,
                      settings.chunk_frames)
        summary = {"input": str(cg_inputs[g].path), "sample": s, "frames": lengths[r],
                   "cg_rmsd_nm": float(np.sqrt(sq_error[r] / lengths[r])),
                   "group_frames_per_s": float(sum(lengths) / elapsed), "seed": settings.seed,
                   "refinement_steps": settings.refinement.steps, "grid_overflow": asdict(overflow[r]),
                   "stereo_corrections": int(corrected[r]),
                   "fingerprint": fingerprints[g][s]}
        with atomic_path(outputs[r].with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        if overflow[r].frames:
            first = overflow[r].first
            print(f"warning: {outputs[r]}: {overflow[r].frames} frames have atoms beyond the voxel grid's usable "
                  f"half-width {limit:.3f} nm (first: frame {first['frame']}, atom {first['atom']} "
                  f"{topology.atom(first['atom'])}, {first['excess_nm']:.3f} nm beyond; largest "
                  f"{overflow[r].max_excess_nm:.3f} nm): their densities are cut by the grid edge")
    progress.discard()
    return outputs


def _write_output(path: Path, frames: np.ndarray, time: np.ndarray, topology: md.Topology, chunk: int) -> None:
    """Write ``frames`` (T, N, 3) nm with their ``time`` (ps) to ``path`` atomically, chunk by chunk."""
    with atomic_path(path) as tmp:
        writer = TrajectoryWriter(tmp, topology)
        try:
            for start in range(0, len(frames), chunk):
                writer.write(frames[start:start + chunk], time[start:start + chunk])
        finally:
            writer.close()


def backmap_files(cfg) -> list[Path]:
    """``tcbm backmap`` from a ``conf/backmap.yaml``-shaped config."""
    check_format(cfg.format)  # settings first: nothing is loaded for a run that cannot write
    settings = RolloutSettings(samples=cfg.samples, latent=cfg.latent, latent_temperature=cfg.latent_temperature,
                               seed=cfg.seed, batch_size=cfg.batch_size,
                               chunk_frames=cfg.chunk_frames, autocast=cfg.autocast, cuda_graph=cfg.cuda_graph,
                               progress=cfg.progress, rotor_hops=cfg.rotor_hops, keep_stereo=cfg.keep_stereo,
                               stiff_coordinates=cfg.stiff_coordinates,
                               refinement=RefinementSettings(**OmegaConf.to_container(cfg.refine, resolve=True)))
    inputs = distributed_share(expand_paths(list(cfg.cg) if not isinstance(cfg.cg, str) else cfg.cg))
    model = BackmapModel.load(cfg.model)
    if cfg.compile:
        model.network.decoder = torch.compile(model.network.decoder)
    return backmap_paths(model, inputs, cfg.out, settings, cfg.format, cfg.cg_top, cfg.input_is_aa, cfg.aa_top,
                         cfg.seed_structure, cfg.device, cfg.stride)
