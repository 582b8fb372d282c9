"""Overlays: SMPL meshes drawn over images and video frames with the project's own rasterizer.

4D-Humans renders its overlays with pyrender (OpenGL). Here the meshes go through
`pipeline.raster.rasterize` (plain tensor operations, CPU or GPU): a z-buffer over
all people of a frame at once, so the nearer person hides the farther one; smooth Lambert
shading from interpolated vertex normals under one fixed light; one colour per track id, stable
across frames and runs (`track_colour`); the id written beside each person; optionally a side
panel with each person turned 90 degrees about the vertical axis through its centre.

Meshes are rebuilt from what a result stores (SMPL parameters and the full-image camera), not
from stored vertices: `SMPLMeshes` runs the SMPL layer on ``smpl.global_orient / body_pose /
betas`` and adds ``camera.t_full``; the pinhole camera has focal ``camera.focal_length_full`` and
its principal point at the image centre (OpenCV axes: x right, y down, z forward; see
docs/coordinates.md). A video is rendered frame by frame: the clip is decoded in chunks
(`pipeline.video.decode.iter_frames`), the result read one frame at a time
(`pipeline.export.source.ResultReader`: the JSON document or the published JSON Lines), each
rendered frame encoded at once (H.264, yuv420p, the clip's frame rate), so memory does not grow
with the video's length.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import cv2
import numpy as np
import torch

from pipeline.atomic import atomic_path, atomic_write
from pipeline.errors import InputError, PoseError
from pipeline.raster import DEFAULT_NEAR, project, rasterize
from pipeline.runtime import resolve_device
from pipeline.video.decode import VideoLimits, iter_frames, probe_video
from pipeline.weights import CacheRoots

logger = logging.getLogger(__name__)

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # hue step: consecutive ids land far apart on the wheel
UNTRACKED_COLOUR = (160, 160, 160)  # BGR, people without a track id


@dataclass(frozen=True)
class RenderConfig:
    """How overlays look. Colours are BGR, as the frames."""

    alpha: float = 0.85  # mesh opacity over the frame (1: opaque)
    light: tuple[float, float, float] = (0.3, -0.6, -1.0)  # towards the light, camera axes: above, left, camera side
    ambient: float = 0.3  # shade of surfaces facing away from the light
    diffuse: float = 0.7  # added in proportion to the cosine towards the light
    side_view: bool = False  # a panel beside the frame: each person turned 90 degrees about its vertical axis
    side_background: tuple[int, int, int] = (255, 255, 255)
    labels: bool = True  # the track id (person index for images) written beside each person
    cull_back_faces: bool = True  # closed meshes (SMPL): a back face never shows; halves the rasterizer's work
    max_pairs: int = 1 << 22  # rasterizer (face, pixel) candidates at once: bounds memory per frame
    crf: int = 20  # H.264 constant rate factor of overlay videos (lower: larger, sharper)


def track_colour(key: int | None) -> tuple[int, int, int]:
    """The BGR colour of a track id: a function of the id alone, so it is the same in every
    frame, video and run. Hues step by the golden ratio (consecutive ids far apart); grey for
    None (detections never confirmed as a track)."""
    if key is None:
        return UNTRACKED_COLOUR
    hue = (0.12 + int(key) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def rotate_about_vertical(vertices: torch.Tensor, degrees: float = 90.0) -> torch.Tensor:
    """Meshes (N, V, 3) each turned about the vertical (camera y) axis through its own
    bounding-box centre, so every person stays where it stands; positive angles turn +z (away
    from the camera) towards +x."""
    centre = (vertices.amin(1, keepdim=True) + vertices.amax(1, keepdim=True)) / 2.0
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=vertices.dtype, device=vertices.device)
    return (vertices - centre) @ rot.T + centre


class MeshRenderer:
    """Shaded, z-buffered meshes over BGR images on one torch device.

    ``faces`` (F, 3) is shared by every mesh (SMPL's triangles). `render` takes camera-frame
    vertices; colours come from a key per mesh (`track_colour`)."""

    def __init__(self, faces: np.ndarray | torch.Tensor, config: RenderConfig = RenderConfig(), device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.config = config
        self.faces = torch.as_tensor(np.asarray(faces), dtype=torch.long).to(self.device)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"expected faces of shape (F, 3), got {tuple(self.faces.shape)}")
        light = torch.tensor(config.light, dtype=torch.float32)
        self.light = (light / light.norm()).to(self.device)

    @torch.no_grad()
    def render(
        self,
        image_bgr: np.ndarray,
        vertices: np.ndarray | torch.Tensor,
        focal: float,
        keys: Sequence[int | None],
        labels: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """The overlay of N meshes on one image.

        image_bgr: (H, W, 3) uint8. vertices: (N, V, 3) metres in the camera frame (already
        translated). focal: pixels, principal point at the image centre. keys: one colour key
        per mesh; labels: text beside each mesh (None: none). Returns BGR uint8 (H, W, 3), or
        (H, 2W, 3) with the side view.
        """
        image = np.ascontiguousarray(image_bgr)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        verts = torch.as_tensor(vertices, dtype=torch.float32).to(self.device)
        if verts.ndim != 3 or verts.shape[-1] != 3:
            raise ValueError(f"expected vertices of shape (N, V, 3), got {tuple(verts.shape)}")
        if len(keys) != len(verts):
            raise ValueError(f"expected one key per mesh ({len(verts)}), got {len(keys)}")
        views = [verts]
        if self.config.side_view:
            views.append(rotate_about_vertical(verts) if len(verts) else verts)
        backgrounds = [torch.from_numpy(image).to(self.device)]
        if self.config.side_view:
            backgrounds.append(torch.tensor(self.config.side_background, dtype=torch.uint8, device=self.device).expand(h, w, 3))
        colours = torch.tensor([track_colour(k) for k in keys], dtype=torch.float32, device=self.device).reshape(-1, 3)
        panels = self._shade(torch.stack(views), torch.stack(backgrounds), float(focal), colours)
        out = [p.cpu().numpy() for p in panels]
        if self.config.labels and labels is not None:
            for panel, view in zip(out, views):
                self._write_labels(panel, view, float(focal), keys, labels)
        return np.ascontiguousarray(np.concatenate(out, axis=1))

    def _shade(self, views: torch.Tensor, backgrounds: torch.Tensor, focal: float, colours: torch.Tensor) -> torch.Tensor:
        """views (B, N, V, 3) -> the meshes composited over ``backgrounds`` (B, H, W, 3) uint8; only
        the covered pixels are computed."""
        b, n, v, _ = views.shape
        h, w = backgrounds.shape[1:3]
        out = backgrounds.clone()
        if n == 0:
            return out
        f = self.faces.shape[0]
        offsets = torch.arange(n, device=self.device).repeat_interleave(f) * v
        faces = self.faces.repeat(n, 1) + offsets[:, None]  # (N F, 3) into the N V vertices
        flat = views.reshape(b, n * v, 3)
        raster_faces = faces
        if self.config.cull_back_faces and _outward(views[0, 0], self.faces):
            # the rasterizer culls the faces of negative screen area: for a mesh wound outwards
            # those are the front ones, so it gets the opposite winding
            raster_faces = faces[:, [0, 2, 1]]
        # HMR2 places people tens to hundreds of metres away (its long lens): no far plane
        frags = rasterize(
            flat, raster_faces, focal=focal, image_size=(h, w), far=math.inf,
            cull_backfaces=self.config.cull_back_faces, max_pairs=self.config.max_pairs,
        )
        for i in range(b):
            face = frags.face[i].reshape(-1)
            covered = torch.nonzero(face >= 0).squeeze(1)
            if covered.numel() == 0:
                continue
            fid = face[covered]
            tri = faces[fid]  # (P, 3) vertex ids
            pts = flat[i]
            normals = _vertex_normals(pts, faces)
            xy = project(pts, focal, (h, w))
            py = (covered // w).to(torch.float32) + 0.5
            px = (covered % w).to(torch.float32) + 0.5
            bary = _barycentric(xy[tri], px, py)  # (P, 3) screen space
            # perspective-correct weights (linear in 1/z), as the rasterizer's depth
            inv_z = bary / pts[tri][..., 2]
            weights = inv_z / inv_z.sum(-1, keepdim=True)
            normal = torch.nn.functional.normalize((weights[..., None] * normals[tri]).sum(1), dim=-1)
            ray = torch.stack([(px - w / 2.0) / focal, (py - h / 2.0) / focal, torch.ones_like(px)], dim=-1)
            # where a back face shows (culling off, an open mesh): light the side facing the camera
            facing = torch.where((normal * ray).sum(-1, keepdim=True) > 0, -normal, normal)
            lambert = (facing @ self.light).clamp(min=0.0)
            shade = self.config.ambient + self.config.diffuse * lambert
            colour = colours[fid // f] * shade[:, None]
            img = out[i].reshape(-1, 3)
            alpha = self.config.alpha
            mixed = (1.0 - alpha) * img[covered].to(torch.float32) + alpha * colour
            img[covered] = mixed.round().clamp(0, 255).to(torch.uint8)
        return out

    def _write_labels(self, panel: np.ndarray, verts: torch.Tensor, focal: float, keys: Sequence[int | None], labels: Sequence[str | None]) -> None:
        """Each label beside its mesh: right of its projected top right corner, inside the panel."""
        h, w = panel.shape[:2]
        scale = max(0.4, h / 720.0 * 0.8)
        thickness = max(1, int(round(scale * 2)))
        xy = project(verts, focal, (h, w)).cpu().numpy()
        in_front = (verts[..., 2] > DEFAULT_NEAR).cpu().numpy()
        for i, text in enumerate(labels):
            if not text or not in_front[i].any():
                continue
            pts = xy[i][in_front[i]]
            pts = pts[np.isfinite(pts).all(1)]
            if len(pts) == 0 or pts[:, 0].max() < 0 or pts[:, 0].min() >= w or pts[:, 1].max() < 0 or pts[:, 1].min() >= h:
                continue  # nobody to label in this panel
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            x = int(np.clip(pts[:, 0].max() + 4, 0, max(0, w - tw - 1)))
            y = int(np.clip(pts[:, 1].min() + th, th + 1, max(th + 1, h - base - 1)))
            colour = track_colour(keys[i])
            cv2.putText(panel, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.putText(panel, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def _outward(points: torch.Tensor, faces: torch.Tensor) -> bool:
    """Whether a closed mesh's faces are wound counter-clockwise seen from outside (its signed
    volume is positive)."""
    tri = points[faces]
    return bool((tri[:, 0] * torch.cross(tri[:, 1], tri[:, 2], dim=-1)).sum() > 0)


def _vertex_normals(points: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (V, 3) of a triangle mesh (orientation as its winding)."""
    tri = points[faces]
    face_n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    normals = torch.zeros_like(points)
    for k in range(3):
        normals.index_add_(0, faces[:, k], face_n)
    return torch.nn.functional.normalize(normals, dim=-1)


def _barycentric(tri_xy: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Barycentric weights (P, 3) of points (px, py) in screen triangles (P, 3, 2)."""
    x0, y0 = tri_xy[:, 0, 0], tri_xy[:, 0, 1]
    e1x, e1y = tri_xy[:, 1, 0] - x0, tri_xy[:, 1, 1] - y0
    e2x, e2y = tri_xy[:, 2, 0] - x0, tri_xy[:, 2, 1] - y0
    area = e1x * e2y - e1y * e2x
    dx, dy = px - x0, py - y0
    w1 = (dx * e2y - dy * e2x) / area
    w2 = (e1x * dy - e1y * dx) / area
    return torch.stack([1.0 - w1 - w2, w1, w2], dim=-1).clamp(min=0.0)


# -- meshes from stored results -------------------------------------------------------------------


class SMPLMeshes:
    """Posed SMPL meshes in the camera frame from a result's people (parameters + ``t_full``)."""

    def __init__(self, body: Any, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.body = body.eval().to(self.device)

    @classmethod
    def from_cache(cls, roots: CacheRoots | None = None, *, device: str | torch.device | None = None, download: bool = True) -> "SMPLMeshes":
        """The SMPL model (the user's licensed file) and the extra-joint regressor, from the
        4D-Humans cache: the same files HMR2 is built with."""
        from pipeline.models.hmr2 import files as hmr2_files
        from pipeline.models.smpl import SMPLBodyModel
        from pipeline.weights import ensure

        roots = roots or CacheRoots.from_env()
        wanted = [f for f in hmr2_files.FILES if f.key in ("smpl.neutral", "hmr2.joint_regressor_extra")]
        paths = ensure(wanted, roots, download=download)
        body = SMPLBodyModel.from_files(paths["smpl.neutral"], paths["hmr2.joint_regressor_extra"])
        return cls(body, device=device)

    @property
    def faces(self) -> np.ndarray:
        return self.body.faces

    @torch.no_grad()
    def camera_vertices(self, people: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, float | None]:
        """Vertices (N, 6890, 3) of the people in the camera frame and their shared focal length
        (None without people). `InputError` ``result_invalid`` for people that are not a
        result's (missing fields, wrong shapes, differing focal lengths)."""
        if not people:
            return torch.zeros((0, 6890, 3), device=self.device), None
        try:
            orient = np.asarray([p["smpl"]["global_orient"] for p in people], np.float32).reshape(-1, 1, 3, 3)
            pose = np.asarray([p["smpl"]["body_pose"] for p in people], np.float32).reshape(-1, 23, 3, 3)
            betas = np.asarray([p["smpl"]["betas"] for p in people], np.float32).reshape(-1, 10)
            t_full = np.asarray([p["camera"]["t_full"] for p in people], np.float32).reshape(-1, 3)
            focal = np.asarray([p["camera"]["focal_length_full"] for p in people], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("result_unreadable", f"expected people with smpl (global_orient 3x3, body_pose 23x3x3, betas 10) and camera (t_full, focal_length_full): {exc}") from exc
        n = len(people)
        if not (len(orient) == len(pose) == len(betas) == len(t_full) == len(focal) == n):
            raise InputError("result_unreadable", "expected one global_orient, body_pose, betas, t_full and focal_length_full per person")
        if not (np.isfinite(focal).all() and (focal > 0).all()) or np.ptp(focal) > 1e-3 * focal.max():
            raise InputError("result_unreadable", f"expected one positive focal_length_full for the people of a frame, got {focal.tolist()}")
        out = self.body(
            torch.from_numpy(orient).to(self.device), torch.from_numpy(pose).to(self.device), torch.from_numpy(betas).to(self.device)
        )
        return out.vertices + torch.from_numpy(t_full).to(self.device)[:, None, :], float(focal[0])


class OverlayRenderer:
    """`SMPLMeshes` + `MeshRenderer`: a result's people drawn over their image or frame."""

    def __init__(self, meshes: SMPLMeshes, config: RenderConfig = RenderConfig()) -> None:
        self.meshes = meshes
        self.renderer = MeshRenderer(meshes.faces, config, device=meshes.device)

    @classmethod
    def from_cache(cls, roots: CacheRoots | None = None, *, device: str | torch.device | None = None, download: bool = True, config: RenderConfig = RenderConfig()) -> "OverlayRenderer":
        return cls(SMPLMeshes.from_cache(roots, device=device, download=download), config)

    @property
    def config(self) -> RenderConfig:
        return self.renderer.config

    def frame(self, image_bgr: np.ndarray, people: Sequence[Mapping[str, Any]], *, key: Literal["track_id", "person_index"] = "track_id") -> np.ndarray:
        """One image with its people; colours and labels by track id (videos) or person index (images)."""
        verts, focal = self.meshes.camera_vertices(people)
        keys = [p.get(key) for p in people]
        labels = [None if k is None else str(k) for k in keys]
        return self.renderer.render(image_bgr, verts, focal or 1.0, keys, labels)

    def person_view(self, image_bgr: np.ndarray, person: Mapping[str, Any], key: int | None) -> np.ndarray:
        """One person as 4D-Humans' demo draws it: HMR2's square crop of the image beside the
        same crop with the mesh drawn by the crop camera (``t_crop``, ``focal_length_crop``),
        and with ``side_view`` the mesh turned 90 degrees on the side background, all S x S
        (S: the network's crop size). The crop window comes from the result alone: centre of
        ``bbox``; side ``2 f_full / (t_full.z s)`` (``s`` of ``pred_cam``), the inverse of
        ``cam_crop_to_full``; S = ``focal_length_crop * max(W, H) / focal_length_full``.
        Returns BGR uint8 (S, 2S, 3), or (S, 3S, 3) with the side view."""
        from pipeline.models.hmr2.preprocess import crop_affine

        h, w = image_bgr.shape[:2]
        try:
            cam = person["camera"]
            x1, y1, x2, y2 = (float(v) for v in person["bbox"])
            f_full, f_crop = float(cam["focal_length_full"]), float(cam["focal_length_crop"])
            scale, tz = float(cam["pred_cam"][0]), float(cam["t_full"][2])
            t_crop = np.asarray(cam["t_crop"], np.float32).reshape(3)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError("result_unreadable", f"expected a person with bbox and camera (pred_cam, t_crop, focal_length_crop, t_full, focal_length_full): {exc!r}") from exc
        size = 2.0 * f_full / (tz * scale) if tz * scale > 0 else math.nan
        side = round(f_crop * max(w, h) / f_full) if f_full > 0 and math.isfinite(f_crop) else 0
        if not (math.isfinite(size) and size > 0 and 8 <= side <= 4096):
            raise InputError("result_unreadable", f"expected a person's crop of 8 to 4096 pixels and a positive size, got {side} px, size {size:g}")
        affine = crop_affine(np.float32((x1 + x2) / 2), np.float32((y1 + y2) / 2), np.float32(size), side)
        crop = cv2.warpAffine(np.ascontiguousarray(image_bgr), affine, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        verts, _ = self.meshes.camera_vertices([person])
        t_full = torch.as_tensor(np.asarray(cam["t_full"], np.float32), device=verts.device)
        in_crop = verts - t_full + torch.as_tensor(t_crop, device=verts.device)
        drawn = self.renderer.render(crop, in_crop, f_crop, [key])
        return np.ascontiguousarray(np.concatenate([crop, drawn], axis=1))


# -- files ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderSummary:
    """What a render wrote."""

    out: Path | None  # None: only the per-person views were written
    frames: int
    people: int  # person-frames drawn
    width: int  # of the written frames (of the per-person views when only those were written)
    height: int
    fps: float | None  # None for an image
    per_person: tuple[Path, ...] = ()  # images: one view per person, in person order

    def to_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "out": None if self.out is None else str(self.out), "frames": self.frames, "people": self.people,
            "width": self.width, "height": self.height, "fps": self.fps,
        }
        if self.per_person:
            answer["per_person"] = [str(p) for p in self.per_person]
        return answer


class H264Writer:
    """BGR frames -> an MP4 (H.264, yuv420p, constant frame rate) with PyAV.

    Odd frame sizes get one black column / row (yuv420p needs even sizes); the index is at the
    front of the file (``faststart``) so a browser can play it while it loads."""

    def __init__(self, path: str | Path, fps: float, *, crf: int = 20) -> None:
        import av

        self.rate = Fraction(fps).limit_denominator(1001000) if fps and fps > 0 else Fraction(30)
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        self.crf = crf
        self.stream: Any = None
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) written

    def write(self, image_bgr: np.ndarray) -> None:
        import av

        h, w = image_bgr.shape[:2]
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.rate, options={"crf": str(self.crf), "preset": "veryfast"})
            self.stream.width, self.stream.height = w + w % 2, h + h % 2
            self.stream.pix_fmt = "yuv420p"
            self.size = (self.stream.width, self.stream.height)
        assert self.size is not None  # set with the stream
        if (w + w % 2, h + h % 2) != self.size:
            raise ValueError(f"expected frames of {self.size[0]}x{self.size[1]}, got {w}x{h}")
        if w % 2 or h % 2:
            image_bgr = np.pad(image_bgr, ((0, h % 2), (0, w % 2), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr), format="bgr24")
        frame.pts = self.frames
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def _pair_frames(frames: Iterator[dict[str, Any]], index: int, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The people of decoded frame ``index`` from the result's frames (in order; a frame missing
    from the result has nobody)."""
    while True:
        if not pending:
            nxt = next(frames, None)
            if nxt is None:
                return []
            pending.append(nxt)
        at = pending[0].get("frame_index")
        if not isinstance(at, int):
            raise InputError("result_unreadable", f"expected an integer frame_index, got {at!r}")
        if at < index:
            raise InputError("result_unreadable", f"expected result frames in increasing order, got frame {at} after frame {index - 1}")
        if at > index:
            return []
        return list(pending.pop(0).get("people") or [])


def _range_of(meta: Mapping[str, Any]) -> tuple[int, int | None]:
    """The frames a result covers: its ``video.range`` (start, end exclusive), else (0, None): all."""
    span = (meta.get("video") or {}).get("range") if isinstance(meta.get("video"), Mapping) else None
    if not span:
        return 0, None
    start, end = span.get("start_frame"), span.get("end_frame")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
        raise InputError("result_unreadable", f"expected video.range with start_frame < end_frame, got {span!r}")
    return start, end


def render_video(
    clip: str | Path,
    result: Any,
    out: str | Path,
    renderer: OverlayRenderer,
    *,
    limits: VideoLimits = VideoLimits(),
    chunk_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> RenderSummary:
    """The overlay MP4 of a video result over its clip, written atomically at ``out``; frames
    and result are read as they are drawn. ``result``: what `ResultReader` reads (the JSON
    document, a folder with ``result.jsonl`` and ``result-meta.json``, `ResultFiles`).

    `InputError` ``result_mismatch`` when the result is another video's (its frame size, or
    frames the clip does not have), ``result_unreadable`` when it is not a video result;
    ``should_stop`` is asked after every chunk (True: `PoseError` ``cancelled``, nothing written);
    ``progress``: a progress bar on stderr, frame by frame."""
    from tqdm import tqdm

    from pipeline.export.source import ResultReader

    info = probe_video(clip, limits)
    fps = info.fps or None
    reader = ResultReader(result)
    frames = reader.frames()
    pending: list[dict[str, Any]] = []
    count = people = 0
    # A result of a range (``video.range``) is drawn over that range only; any other over the
    # whole clip. The document's ``video`` precedes its frames: known once the first is read.
    first = next(frames, None)
    if first is not None:
        pending.append(first)
    start, end = _range_of(reader.meta)
    total = max(0, (info.frame_count if end is None else min(end, info.frame_count)) - start)
    with atomic_path(out) as tmp, tqdm(total=total, unit="frame", disable=not progress, desc=Path(out).name) as bar:
        writer = H264Writer(tmp, fps or 30.0, crf=renderer.config.crf)
        decoded = iter_frames(clip, limits, chunk_size=chunk_size, start_frame=start)
        try:
            for chunk in decoded:
                for index, image in zip(chunk.indices.tolist(), chunk.frames):
                    if end is not None and index >= end:
                        break
                    these = _pair_frames(frames, int(index), pending)
                    writer.write(renderer.frame(image, these))
                    count += 1
                    people += len(these)
                    bar.update(1)
                if should_stop is not None and should_stop():
                    raise PoseError("cancelled", "the job was cancelled", status=409)
                if end is not None and chunk.start + len(chunk) >= end:
                    break  # no need to decode the rest of the clip
            extra = pending[0] if pending else next(frames, None)
            if extra is not None:
                raise InputError(
                    "result_mismatch",
                    f"the result has frame {extra.get('frame_index')} but the clip decodes to {start + count} frames: "
                    "is it this clip's result?",
                )
            _check_video_meta(reader.meta, info)
        finally:
            decoded.close()
            writer.close()
        width, height = writer.size or (info.width, info.height)
    logger.info("overlay of %d frames (%d people) written to %s", count, people, out)
    return RenderSummary(out=Path(out), frames=count, people=people, width=width, height=height, fps=fps)


def _check_video_meta(meta: Mapping[str, Any], info: Any) -> None:
    """The result's ``video`` (known once its frames are read) describes the clip."""
    video = meta.get("video")
    if not isinstance(video, Mapping):
        raise InputError("result_unreadable", "expected a video result (with video and frames), e.g. from `python -m pipeline video`")
    if (video.get("width"), video.get("height")) != (info.width, info.height):
        raise InputError(
            "result_mismatch",
            f"the result is for a {video.get('width')}x{video.get('height')} video, the clip is {info.width}x{info.height}",
        )


def render_image(
    photo: str | Path,
    result: str | Path | Mapping[str, Any],
    out: str | Path,
    renderer: OverlayRenderer,
    *,
    per_person: bool = False,
    full_frame: bool = True,
) -> RenderSummary:
    """The overlay of an image result (`pipeline.schema.ImageResult`, or a folder's document
    ``{"images": [...]}``, whose entry for ``photo``'s file name is taken) over its image; PNG or
    JPEG by ``out``'s suffix, written atomically. ``per_person``: also each person's view
    (`OverlayRenderer.person_view`) as ``<out stem>_<i><suffix>``, i the person index, as
    4D-Humans' demo writes them; ``full_frame`` False: those only, ``out`` itself not written."""
    from pipeline.imageio import load_image

    document = json.loads(Path(result).read_bytes()) if not isinstance(result, Mapping) else result
    if isinstance(document, Mapping) and isinstance(document.get("images"), list):
        document = _folder_entry(document["images"], Path(photo))
    if not isinstance(document, Mapping) or not isinstance(document.get("people"), list):
        raise InputError("result_unreadable", "expected an image result (a JSON object with people), e.g. from `python -m pipeline image`")
    image = load_image(photo)
    size = document.get("image") or {}
    if (size.get("width"), size.get("height")) != (image.shape[1], image.shape[0]):
        raise InputError(
            "result_mismatch",
            f"the result is for a {size.get('width')}x{size.get('height')} image, the photo is {image.shape[1]}x{image.shape[0]}",
        )
    people = document["people"]
    out = Path(out)
    ext = out.suffix or ".png"
    views = []
    if per_person:  # every view drawn before any file is written
        for i, p in enumerate(people):
            index = p.get("person_index", i)
            views.append((out.with_name(f"{out.stem}_{index}{ext}"), renderer.person_view(image, p, index)))
    drawn = renderer.frame(image, people, key="person_index") if full_frame or not per_person else None
    for path, view in views:
        atomic_write(path, encode_image(view, ext))
    if drawn is not None:
        atomic_write(out, encode_image(drawn, ext))
    shape = drawn.shape if drawn is not None else views[0][1].shape if views else (0, 0)
    return RenderSummary(
        out=out if drawn is not None else None, frames=1, people=len(people), width=shape[1], height=shape[0], fps=None,
        per_person=tuple(path for path, _ in views),
    )


def _folder_entry(entries: list[Any], photo: Path) -> Mapping[str, Any]:
    """The entry of a folder's result for ``photo`` (by its path relative to the folder, or its
    name); an entry that carries an error has no people to draw."""
    for entry in entries:
        name = entry.get("file") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and (photo.as_posix().endswith("/" + name) or photo.as_posix() == name or photo.name == name):
            if "error" in entry:
                raise InputError("result_mismatch", f"the result has no people for {name}: its entry is an error ({entry['error'].get('code')})")
            return entry
    raise InputError("result_mismatch", f"the folder's result has no entry for {photo.name}")


def encode_image(image_bgr: np.ndarray, ext: str = ".png") -> bytes:
    """A BGR image as PNG or JPEG bytes."""
    if ext.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError("output_format_unsupported", f"expected an image output ending in .png or .jpg, got {ext!r}")
    params = [cv2.IMWRITE_PNG_COMPRESSION, 6] if ext.lower() == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 92]
    ok, buf = cv2.imencode(ext.lower(), image_bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return buf.tobytes()


def overlay_from_output(image_bgr: np.ndarray, output: Any, renderer: MeshRenderer) -> np.ndarray:
    """The overlay of an `HMR2Output` with vertices (what the served regressor has in hand):
    the same camera as a stored result's, colours and labels by person index."""
    if output.vertices is None:
        raise ValueError("expected HMR2 outputs with vertices")
    n = len(output)
    verts = torch.as_tensor(np.asarray(output.vertices, np.float32) + np.asarray(output.cam_t_full, np.float32)[:, None, :])
    focal = float(output.focal_length_full[0]) if n else 1.0
    keys = list(range(n))
    return renderer.render(image_bgr, verts, focal, keys, [str(k) for k in keys])

