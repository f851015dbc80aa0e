"""Pictures of what the extractor sees: a frame, its motion field, the accumulated motion
and residual, side by side, so a user can check a video at a glance."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cvpipe.video import Video, subpel_motion  # noqa: E402


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-wheel picture of a motion field (H, W, 2): hue is direction, brightness is length.

    `max_magnitude` fixes the scale (default: the field's own 99th percentile), so two
    panels can share one.
    """
    fx, fy = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    magnitude = np.hypot(fx, fy)
    if max_magnitude is None:
        max_magnitude = float(np.percentile(magnitude, 99)) if magnitude.any() else 1.0
    hue = (np.arctan2(fy, fx) / (2 * np.pi)) % 1.0
    value = np.clip(magnitude / max(max_magnitude, 1e-6), 0.0, 1.0)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1)
    return matplotlib.colors.hsv_to_rgb(hsv)


def colour_wheel(size: int = 64) -> np.ndarray:
    """The legend of flow_to_rgb: motion (x, y) at each point of a disc."""
    r = np.linspace(-1, 1, size, dtype=np.float32)
    x, y = np.meshgrid(r, r)
    rgb = flow_to_rgb(np.stack([x, y], axis=-1), max_magnitude=1.0)
    rgb[np.hypot(x, y) > 1] = 1.0
    return rgb


def render(video: Video, frame: int, out: str | os.PathLike, arrow_step: int = 1) -> None:
    """Writes a PNG with four panels for `frame`: the decoded frame with its block vectors as
    arrows, its own CoViAR MV field, the MV and the residual accumulated to the I-frame."""
    gop, position = video.locate(frame)
    r = video.extract([frame], ("bgr", "mv", "mv_accumulated", "residual_accumulated", "blocks"))
    rgb = r["bgr"][0][..., ::-1]
    blocks = r["blocks"][0]
    frame_scale = max(float(np.abs(r["mv"][0]).max()), 1.0)
    scale = max(float(np.abs(r["mv_accumulated"][0]).max()), 1.0)

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6), constrained_layout=True)
    axes[0].imshow(rgb)
    if len(blocks):
        moving = blocks[(blocks["motion_x"] != 0) | (blocks["motion_y"] != 0)][::arrow_step]
        motion = subpel_motion(moving)
        # Arrows point from where the block came from to where it is (dst - src), drawn
        # `gain` times longer so a 1-pixel motion is still visible at a block's size.
        gain = max(1.0, 12.0 / max(float(np.abs(motion).max(initial=0.0)), 1e-6))
        axes[0].quiver(moving["dst_x"], moving["dst_y"], -motion[:, 0], -motion[:, 1], color="yellow",
                       angles="xy", scale_units="xy", scale=1 / gain, width=0.004)
        axes[0].set_xlabel(f"arrows: block motion x{gain:.0f}")
        axes[0].set_xlim(-0.5, video.width - 0.5)
        axes[0].set_ylim(video.height - 0.5, -0.5)
    axes[0].set_title(f"frame {frame} ({video.frame_types[frame]}), GOP {gop} position {position}\n"
                      f"{len(blocks)} block vectors")
    axes[1].imshow(flow_to_rgb(r["mv"][0], frame_scale))
    axes[1].set_title(f"motion vectors (this frame), max |mv| {frame_scale:.0f} px")
    axes[2].imshow(flow_to_rgb(r["mv_accumulated"][0], scale))
    axes[2].set_title(f"accumulated motion (to the I-frame), max |mv| {scale:.0f} px")
    residual = np.abs(r["residual_accumulated"][0].astype(np.int32)).mean(axis=-1)
    im = axes[3].imshow(residual, cmap="magma", vmin=0, vmax=max(float(residual.max()), 1.0))
    axes[3].set_title("accumulated residual |BGR - I(trace)|")
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    inset = axes[1].inset_axes([0.78, 0.02, 0.2, 0.2 * video.width / video.height])
    inset.imshow(colour_wheel())
    inset.set_axis_off()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{os.path.basename(video.path)}: {video.width}x{video.height}, {video.num_frames} frames, "
                 f"{video.num_gops} GOPs")
    fig.savefig(out, dpi=90)
    plt.close(fig)
