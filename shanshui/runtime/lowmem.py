"""Low-memory generation on ONNX Runtime: strategies that trade a little speed for a smaller peak resident set.

    lean        sessions without the CPU arena, memory patterns or weight prepacking; initializers from the device
                allocator (so they are freed with the session); external weight files memory-mapped by ORT
    sequential  load → run → free per component (text encoder, then U-Net, then VAE decoder): at most one resident
    split       the guidance batch (uncond, cond) run as two U-Net calls of one image each: half the activations
    tiled VAE   the VAE decoder in tiles: exact where the export's decoder is cut at its group norms (`shanshui
                lowmem`, see vae_segments.py), else over overlapping tiles, blended (see vae_tiling.py)

memory_plan.py lists them from fastest to smallest and estimates each one's peak before anything is loaded
(`--max-memory` picks the first that fits the budget; `--low-memory` the smallest); LowMemComponents runs the one
chosen. Torch-free.
"""

from __future__ import annotations

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.integrity import inside
from shanshui.runtime.backends import ORT_DTYPES, OrtComponents
from shanshui.runtime.memory_plan import (  # noqa: F401 - the plan's names, re-exported for lowmem's users
    BY_NAME,
    EXACT_TILE,
    LOW_MEMORY,
    NORMAL,
    STRATEGIES,
    STREAMED_WHOLE_VAE,
    VAE_ARENA,
    VAE_TILE,
    Strategy,
    _keep_parts,
    _prepacked,
    _vae_activations_mb,
    choose,
    footprint,
    format_mb,
    lowest,
    parse_budget,
    resolve,
    smallest,
    tile_side,
    usable,
)
from shanshui.runtime.ort_cache import cached_session
from shanshui.runtime.ort_memory import (
    MMAP_THRESHOLD,
    SHRINK,
    UNET_MMAP_THRESHOLD,
    release_memory,
    session_options,
    shared_arena,
    shrink_shared_arena,
    small_heap,
)
from shanshui.runtime.vae_segments import decode_segmented
from shanshui.runtime.vae_tiling import decode_tiled


class LowMemComponents(OrtComponents):
    """OrtComponents under a Strategy: sessions made on first use and, when sequential, at most one resident
    (asking for another component frees the one loaded); the guidance batch split; the VAE decoded in tiles."""

    def __init__(self, model, strategy: Strategy, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        if device == "cuda":
            raise ShanshuiError("low-memory modes are for the CPU; drop --device cuda, or --low-memory/--max-memory")
        if not usable(strategy, model.manifest):
            raise ShanshuiError(f"the {strategy.name} strategy needs an export whose U-Net is cut into parts; "
                                f"make one with shanshui.export.split, or use --low-memory")
        self.model, self.strategy, self.threads = model, strategy, threads
        self.providers, self.device = ["CPUExecutionProvider"], "cpu"
        self._ort = ort
        self.sessions: dict = {}
        self.kept: dict = {}  # streamed: part index -> session kept loaded between steps (Strategy.kept_parts)
        self.dtypes: dict = {}
        self.loads = {c: 0 for c in ("text_encoder", "unet", "vae_decoder", "vae_encoder")}
        self.has_encoder = "vae_encoder" in model.manifest["components"]
        self.scalar_t = False
        # int8 parts: the full level (see session_options) and prepacked weights: an SD 1.5 int8 U-Net at 256 px ran
        # 3.7 s per call without prepacking, 1.5 s with it, for 400 MB more when whole (a part is an eighth of that)
        self._float_parts = not _prepacked(model.manifest, "unet")
        if not strategy.sequential:
            for comp in ("text_encoder", "unet", "vae_decoder"):
                self._session(comp)

    def _session(self, comp: str):
        arena = comp == "vae_decoder" and self.strategy.vae_arena
        if self.strategy.lean:
            small_heap(UNET_MMAP_THRESHOLD if comp == "unet" or arena else MMAP_THRESHOLD)
        if comp in self.sessions:
            return self.sessions[comp]
        if self.strategy.sequential:
            self.free()
        path = self.model.onnx_path(comp)
        try:
            # an int8 U-Net prepacked as in the normal mode: its unpacked kernels round otherwise (21 dB apart in the
            # image at SD 1.5 256 px) and run 2-3× slower
            prepack = _prepacked(self.model.manifest, comp)
            def make():
                opts = session_options(comp, self.threads, self.strategy.lean, prepack=prepack)
                opts.enable_cpu_mem_arena = opts.enable_cpu_mem_arena or arena  # its own, freed with the session
                return opts
            # prepacked: the laid-out weights from the cache (ort_cache.py) when the low-memory modes load it again
            ident = self._identity(comp, f"{comp}/{path.name}") if prepack else None
            sess = cached_session(self._ort, path, ident, make, self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types, all Exception subclasses
            raise ShanshuiError(f"cannot load {path}: {str(e).splitlines()[0]}; re-run `shanshui export`") from None
        self.sessions[comp] = sess
        self.loads[comp] += 1
        self.dtypes.update({(comp, i.name): ORT_DTYPES.get(i.type, np.float32) for i in sess.get_inputs()})
        if comp == "unet":
            self.scalar_t = [len(i.shape) for i in sess.get_inputs() if i.name == "timestep"] == [0]
        return sess

    def free(self, parts: bool = True) -> None:
        """Drop every loaded session (and the kept U-Net parts, unless parts=False) and return the memory."""
        if self.sessions or (parts and self.kept):
            kept = parts and bool(self.kept)
            self.sessions.clear()
            if parts:
                self.kept.clear()
            release_memory()
            if kept:
                shrink_shared_arena()  # the kept parts' prepacked weights sat in the shared arena

    def _identity(self, comp: str, rel: str) -> dict | None:
        """What names a graph's cache entry: its file and the hashes the manifest records for its component's files
        (graphs and weights), with the settings the entry was optimized under. None where no hashes are recorded."""
        hashes = self.model.manifest["components"][comp].get("sha256")
        return {"file": rel, "sha256": hashes, "level": "all", "prepack": True} if hashes else None

    def resident(self) -> list[str]:
        return list(self.sessions)

    def text_encoder(self, input_ids: np.ndarray) -> np.ndarray:
        parts = self.model.manifest["components"]["text_encoder"].get("parts")
        if self.strategy.streamed and parts:  # as the whole encoder loads in these modes: full level, no prepacking
            self.free()
            small_heap(MMAP_THRESHOLD)
            make = lambda: session_options("text_encoder", self.threads, True)  # noqa: E731
            live = self._run_parts(parts, [{"input_ids": input_ids}], make, "text encoder part")[0]
            self.loads["text_encoder"] += 1
            return live["last_hidden_state"]
        self._session("text_encoder")
        return super().text_encoder(input_ids)

    def unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        if self.strategy.streamed:
            return self._streamed_unet(x, t, cond)
        self._session("unet")
        if not self.strategy.split_batch or len(x) == 1:
            return super().unet(x, t, cond)
        outs = [super(LowMemComponents, self).unet(x[i:i + 1], t[i:i + 1], cond[i:i + 1]) for i in range(len(x))]
        return np.concatenate(outs)  # (B2, C, h, w)

    def _streamed_unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """One U-Net call through its parts; the first Strategy.kept_parts stay loaded from call to call. Split:
        each loaded part runs each image of the guidance batch in turn (half the activations, the same loads)."""
        # the smallest mode (no kept parts) hands every block of 256 KiB and more straight back: SD 1.5 fp32 at 512 px
        # in 32 parts, the heaviest part's peak 466 → 317 MB, the U-Net call 23.8 vs 24.3 s; a budget keeps the
        # faster heap of the whole U-Net (see UNET_MMAP_THRESHOLD)
        small_heap(MMAP_THRESHOLD if not self.strategy.kept_parts else UNET_MMAP_THRESHOLD)
        self.free(parts=False)  # the text encoder; kept parts stay
        def make():
            opts = session_options("unet", self.threads, True, basic=self._float_parts, prepack=not self._float_parts)
            if self.strategy.kept_parts:
                shared_arena(opts)
            return opts
        rows = [slice(i, i + 1) for i in range(len(x))] if self.strategy.split_batch else [slice(None)]
        lives = [{"sample": x[r], "timestep": t[r], "encoder_hidden_states": cond[r]} for r in rows]
        lives = self._run_parts(self.model.manifest["components"]["unet"]["parts"], lives, make, "U-Net part",
                                keep=self.strategy.kept_parts, shrink=bool(self.strategy.kept_parts),
                                comp=None if self._float_parts else "unet")
        self.loads["unet"] += 1
        return np.concatenate([live["out_sample"] for live in lives])  # (B2, C, h, w)

    def _run_parts(self, parts: list[dict], lives: list[dict], make_opts, what: str, keep: int = 0,
                   shrink: bool = False, comp: str | None = None) -> list[dict]:
        """A component's parts each loaded (or kept: the first `keep` are, in self.kept), run on each of `lives`
        (inputs by name: one dict per independent call) and freed in turn; tensors kept only until their last
        reader. make_opts() gives each load its SessionOptions; comp: the component whose prepacked parts load from
        the cache (ort_cache.py). shrink: the last run hands the shared arena's free blocks back. Returns each
        call's outputs."""
        last_run = self._ort.RunOptions()
        if shrink:
            last_run.add_run_config_entry(SHRINK, "cpu:0")
        own = set(lives[0])  # the component's own inputs: cast to the types its graphs declare
        last = {name: k for k, part in enumerate(parts) for name in part["inputs"]}
        for k, part in enumerate(parts):
            sess = self.kept.get(k) if keep else None
            if sess is None:
                path = inside(self.model.root, part["file"], what)  # listed in files: hashed when opened
                ident = self._identity(comp, part["file"]) if comp else None  # prepacked parts: from the cache
                sess = cached_session(self._ort, path, ident, make_opts, self.providers)
                if k < keep:
                    self.kept[k] = sess
            # plain values: a NodeArg left bound after a loop keeps its session alive, so the part just run stayed
            # loaded beside the next one (SD 1.5's fp16 text encoder in 4 parts: 309 MB peak, 93 MB held between parts)
            inputs = [(i.name, i.type, len(i.shape)) for i in sess.get_inputs()]
            for j, live in enumerate(lives):
                feeds = {}
                for name, kind, rank in inputs:
                    v = live[name]
                    if name in own:  # parts declare no shapes: the timestep goes as the one value the denoiser gives
                        v = np.asarray(v[0] if name == "timestep" and rank == 0 else v)
                        v = v.astype(ORT_DTYPES.get(kind, np.float32), copy=False)
                    feeds[name] = v  # tensors between parts pass as the earlier part made them
                run = last_run if (k, j) == (len(parts) - 1, len(lives) - 1) else None
                live.update(zip(part["outputs"], sess.run(part["outputs"], feeds, run)))
                for name in [n for n in live if last.get(n, k + 1) <= k]:  # what no later part reads (outputs stay)
                    del live[name]
            del sess
            if k >= keep:  # a kept part's heap is the next part's: trimming it costs page faults, frees nothing
                release_memory()
        return lives

    def vae_decoder(self, z: np.ndarray) -> np.ndarray:
        segments = self.model.manifest["components"]["vae_decoder"].get("segments")
        if self.strategy.vae_tile is not None and segments:
            return self._segmented_vae(z, segments)
        self._session("vae_decoder")
        decode = super().vae_decoder
        if self.strategy.vae_tile is None:
            return decode(z)
        scale = int(self.model.manifest["dims"]["vae_scale"])
        tile = tile_side(self.strategy.vae_tile, z.shape[2], z.shape[3])
        return np.concatenate([decode_tiled(decode, z[i:i + 1], scale, tile) for i in range(len(z))])

    def _segmented_vae(self, z: np.ndarray, segments: list[dict]) -> np.ndarray:
        """The decoder's segments, each loaded once, run over every tile and freed (vae_segments.py): exact tiles."""
        small_heap(MMAP_THRESHOLD)
        self.free()
        opts = session_options("vae_decoder", self.threads, True)

        def load(k: int):
            seg = segments[k]
            path = inside(self.model.root, seg["file"], "VAE decoder segment")  # listed in files: hashed when opened
            sess = self._ort.InferenceSession(str(path), opts, providers=self.providers)
            types = {i.name: ORT_DTYPES.get(i.type, np.float32) for i in sess.get_inputs()}

            def run(feeds: dict) -> dict:
                feeds = {n: np.asarray(v).astype(types.get(n, v.dtype), copy=False) for n, v in feeds.items()}
                outs = sess.run(seg["outputs"], feeds)
                return dict(zip(seg["outputs"], outs))
            return run

        image = decode_segmented(load, segments, np.asarray(z), EXACT_TILE)
        self.loads["vae_decoder"] += 1
        release_memory()
        return image.astype(np.float32, copy=False)

    def vae_encoder(self, image: np.ndarray) -> np.ndarray:
        self._session("vae_encoder")
        return super().vae_encoder(image)
