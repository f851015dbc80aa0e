"""Drawing the synthetic action videos with numpy: surfaces, motions, glowing spots, scenes.

A class shows one cue per modality (`cvpipe.datasets.synth` assigns them), each needing
the whole actor to read:
- appearance (what an I-frame shows): the actor is two discs stacked on each other, each
  with a surface (texture and colour pair); a class is an ordered pair of surfaces, so the
  same two surfaces in the other order are another class;
- motion (what motion vectors show): a pose track of the actor relative to the
  background: a direction, a zoom or a turn, each told from one segment's motion;
- change in place (what residuals show): three spots on the actor that flash (invert what is
  under them) and fade within every GOP, invisible at each GOP's first frame (the I-frame
  never shows them, motion does not explain them), in a pattern on a 3 x 3 grid over the actor.
A cue can be absent from a video (`Cues`): the two discs share one surface, the actor
stays where it is, or no spot lights.

A scene draws, back to front: a value-noise background seen by a camera that pans and
shakes, one or two grey distractor squares drifting on their own (sometimes in front of
the actor), the actor and its spots, sometimes a foreground pole, then a slight
brightness flicker and sensor noise. Every random choice comes from the generator handed
to `Scene.sample`, so a seed fixes the video. Lengths and speeds scale with the frame's
shorter side (`unit`), so a 340x256 video shows the same scene as a 160x128 one, only sharper.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import numpy as np

Texture = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# Speeds below are pixels per frame at this shorter side; other sizes scale them.
REFERENCE_SIDE = 128


def _soft(z: np.ndarray) -> np.ndarray:
    """A soft square wave from a sine: flat tops, edges a few pixels wide, no aliasing."""
    return np.clip(0.5 + 1.5 * z, 0.0, 1.0)


def _stripes(u, v, p):
    return _soft(np.sin(2 * np.pi * p[0] * u + p[1]))


def _dots(u, v, p):
    gu = np.mod(p[0] * u + p[1], 1.0) - 0.5
    gv = np.mod(p[0] * v + p[2], 1.0) - 0.5
    return np.clip((0.32 - np.hypot(gu, gv)) * 10 + 0.5, 0.0, 1.0)


def _checker(u, v, p):
    return _soft(2 * np.sin(np.pi * p[0] * u + p[1]) * np.sin(np.pi * p[0] * v + p[2]))


def _sectors(u, v, p):
    return _soft(np.sin(3 * np.arctan2(v, u) + p[1]))


def _grid(u, v, p):
    line_u = np.clip(1.0 - 3.0 * np.abs(np.sin(np.pi * p[0] * u + p[1])), 0.0, 1.0)
    line_v = np.clip(1.0 - 3.0 * np.abs(np.sin(np.pi * p[0] * v + p[2])), 0.0, 1.0)
    return np.maximum(line_u, line_v)


def _waves(u, v, p):
    return _soft(np.sin(2 * np.pi * p[0] * (u + 0.22 * np.sin(2.5 * np.pi * v + p[2])) + p[1]))


def _chevrons(u, v, p):
    tri = np.abs(np.mod(1.6 * p[0] * v + p[2], 2.0) - 1.0)
    return _soft(np.sin(2 * np.pi * p[0] * (u + 0.45 * tri) + p[1]))


def _rings_and_spokes(u, v, p):
    spokes = np.sin(4 * np.arctan2(v, u) + p[1])
    rings = np.sin(2 * np.pi * p[0] * np.hypot(u, v) + p[2])
    return _soft(1.5 * spokes * rings)


@dataclass(frozen=True)
class Surface:
    name: str
    description: str
    dark: tuple[float, float, float]    # BGR
    light: tuple[float, float, float]   # BGR
    texture: Texture


# Textures repeat about twice per radius; orientation and phase are random per video.
SURFACES = (
    Surface("stripes", "red and white parallel stripes", (40, 40, 200), (235, 235, 245), _stripes),
    Surface("dots", "yellow dots on blue", (150, 60, 20), (40, 220, 240), _dots),
    Surface("checker", "green and black checkerboard", (20, 25, 20), (60, 210, 70), _checker),
    Surface("pinwheel", "six magenta and cyan sectors", (200, 40, 190), (230, 220, 40), _sectors),
    Surface("grid", "orange grid lines on dark brown", (20, 40, 70), (30, 150, 250), _grid),
    Surface("waves", "purple and pink wavy bands", (120, 30, 90), (200, 150, 250), _waves),
    Surface("chevrons", "teal and cream zigzag bands", (120, 110, 10), (190, 230, 240), _chevrons),
    Surface("target", "white rings crossed by spokes on navy", (90, 20, 10), (240, 240, 240), _rings_and_spokes),
)


@dataclass(frozen=True)
class Motion:
    name: str
    description: str


STILL = "still"  # the motion of a video whose motion cue is absent
# Each motion can be told from one segment's accumulated motion (what a TSN network sees):
# a displacement away from the I-frame, a divergence, or the two discs moving apart
# around the actor's centre. An oscillation or an orbit could not (its displacement
# within one GOP points any way), so none is a class.
MOTIONS = (
    Motion("right", "moves right, 1.0-1.6 px/frame"),
    Motion("left", "moves left, 1.0-1.6 px/frame"),
    Motion("down", "moves down, 1.0-1.6 px/frame"),
    Motion("up", "moves up, 1.0-1.6 px/frame"),
    Motion("down_right", "moves down and right, 0.7-1.1 px/frame each way"),
    Motion("up_left", "moves up and left, 0.7-1.1 px/frame each way"),
    Motion("down_left", "moves down and left, 0.7-1.1 px/frame each way"),
    Motion("up_right", "moves up and right, 0.7-1.1 px/frame each way"),
    Motion("zoom_in", "grows 1.8x over the clip (approach)"),
    Motion("zoom_out", "shrinks 1.8x over the clip (recede)"),
    Motion("turn", "turns clockwise, 45 degrees over the clip"),
    Motion("turn_back", "turns counter-clockwise, 45 degrees over the clip"),
)
# Directions as (x, y) signs, y down.
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
               "down_right": (1, 1), "up_left": (-1, -1), "down_left": (-1, 1), "up_right": (1, -1)}

# Spot patterns: three cells (row, column) of a 3 x 3 grid over the actor, rows top to
# bottom. Every pattern has three spots, so only their layout on the actor tells them apart.
SPOT_PATTERNS = (
    ("top row", ((0, 0), (0, 1), (0, 2))),
    ("middle row", ((1, 0), (1, 1), (1, 2))),
    ("bottom row", ((2, 0), (2, 1), (2, 2))),
    ("left column", ((0, 0), (1, 0), (2, 0))),
    ("middle column", ((0, 1), (1, 1), (2, 1))),
    ("right column", ((0, 2), (1, 2), (2, 2))),
    ("diagonal", ((0, 0), (1, 1), (2, 2))),
    ("anti-diagonal", ((0, 2), (1, 1), (2, 0))),
    ("V", ((0, 0), (1, 1), (0, 2))),
    ("caret", ((2, 0), (1, 1), (2, 2))),
    ("less-than", ((0, 2), (1, 0), (2, 2))),
    ("greater-than", ((0, 0), (1, 2), (2, 0))),
)


@dataclass(frozen=True)
class Cues:
    """What one video shows of its class, per modality; None or () where a cue is absent."""

    top: int                       # surface index of the upper disc
    bottom: int                    # surface index of the lower disc (== top: no appearance cue)
    motion: str                    # a MOTIONS name, or STILL
    spots: tuple[tuple[int, int], ...]  # lit cells; () for none


@dataclass(frozen=True)
class Track:
    """A sprite's pose per frame, in world pixels (the screen is world minus camera)."""

    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray    # radians; increasing turns clockwise on screen (y points down)
    radius: np.ndarray


def _motion_track(motion: str, rng: np.random.Generator, frames: int, unit: float, radius: float) -> Track:
    """The actor's pose relative to its start, before placement: centre, tilt, part radius."""
    t = np.arange(frames, dtype=np.float64)
    # Every actor drifts a little and is tilted a little, whatever its class.
    x, y = (rng.uniform(-0.15, 0.15) * unit * t for _ in range(2))
    angle = np.full(frames, rng.uniform(-0.25, 0.25))
    scale = np.ones(frames)
    progress = t / max(frames - 1, 1)
    if motion in _DIRECTIONS:
        sx, sy = _DIRECTIONS[motion]
        speed = (rng.uniform(1.0, 1.6) if sx == 0 or sy == 0 else rng.uniform(0.7, 1.1)) * unit
        x, y = x + sx * speed * t, y + sy * speed * t
    elif motion in ("zoom_in", "zoom_out"):
        growth = 1.8 ** progress
        scale = 0.75 * (growth if motion == "zoom_in" else growth[::-1])
    elif motion in ("turn", "turn_back"):
        angle = angle + (1 if motion == "turn" else -1) * np.pi / 4 * progress
    elif motion != STILL:
        raise ValueError(f"unknown motion {motion!r}; known: {', '.join(m.name for m in MOTIONS)}, {STILL}")
    return Track(x, y, angle, radius * scale)


def _place(track: Track, camera: np.ndarray, width: int, height: int, rng: np.random.Generator,
           reach: tuple[float, float] = (0.8, 0.8)) -> Track:
    """Shifts a track so that its path on screen stays in view where it can (random within
    the slack); `reach` is the sprite's half extent across and down, in radii, kept in view."""
    shifts = []
    for coord, cam, size, extent in ((track.x, camera[:, 0], width, reach[0]), (track.y, camera[:, 1], height, reach[1])):
        screen = coord - cam
        margin = extent * track.radius.max()
        low, high = margin - screen.min(), size - margin - screen.max()
        shifts.append(rng.uniform(low, high) if low <= high else (low + high) / 2)
    return Track(track.x + shifts[0], track.y + shifts[1], track.angle, track.radius)


def _value_noise(lattice: np.ndarray, xs: np.ndarray, ys: np.ndarray, cell: float) -> np.ndarray:
    """Smooth noise over a periodic random lattice at pixel columns xs and rows ys, (len(ys), len(xs))."""
    rows, cols = lattice.shape

    def axis(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scaled = coords / cell
        base = np.floor(scaled)
        frac = scaled - base
        frac = frac * frac * (3 - 2 * frac)  # smoothstep: no creases at lattice lines
        base = base.astype(np.int64)
        return np.mod(base, n), np.mod(base + 1, n), frac

    r0, r1, fy = axis(ys, rows)
    c0, c1, fx = axis(xs, cols)
    along_rows = lattice[r0] * (1 - fy)[:, None] + lattice[r1] * fy[:, None]  # (H, cols)
    return along_rows[:, c0] * (1 - fx) + along_rows[:, c1] * fx


@dataclass(frozen=True)
class Sprite:
    track: Track
    dark: np.ndarray     # BGR float
    light: np.ndarray
    texture: Texture
    params: np.ndarray   # the texture's frequency and phases
    shape: str = "disc"  # "disc", "square", or "band" (infinitely tall, radius is the half-width)
    opacity: np.ndarray | None = None  # (T,) per-frame opacity; None: opaque
    invert: bool = False  # blend towards the inverse of what is behind (a light that shows on any surface)


def _attached(track: Track, dx: float, dy: float, size: float) -> Track:
    """The track of a sprite fixed to another at offset (dx, dy) and radius `size`, both in
    its radii and in its tilted frame (so it turns and scales with it)."""
    c, s = np.cos(track.angle), np.sin(track.angle)
    ox, oy = (c * dx - s * dy) * track.radius, (s * dx + c * dy) * track.radius
    return Track(track.x + ox, track.y + oy, track.angle, track.radius * size)


SPOT_SIZE = 0.4        # spot radius, in part radii
SPOT_SPACING = (0.55, 1.15)  # grid step across and down, in part radii


def _pulse(frames: int, gop: int) -> np.ndarray:
    """The spots' opacity: 0 at every GOP's first frame, brightest mid-GOP."""
    return np.sin(np.pi * (np.arange(frames) % gop) / gop) ** 2


def _random_colour(rng: np.random.Generator, low: float, high: float, saturation: float) -> np.ndarray:
    grey = rng.uniform(low, high)
    return np.clip(grey + rng.uniform(-saturation, saturation, 3), 0, 255)


def _blotches(lattice: np.ndarray, u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Distractors' texture: a small random lattice stretched over the object, thresholded softly."""
    n = lattice.shape[0]
    fu = np.clip((u + 1.5) / 3.0 * (n - 1), 0, n - 1.001)
    fv = np.clip((v + 1.5) / 3.0 * (n - 1), 0, n - 1.001)
    iu, iv = fu.astype(np.int64), fv.astype(np.int64)
    au, av = fu - iu, fv - iv
    top = lattice[iv, iu] * (1 - au) + lattice[iv, iu + 1] * au
    bottom = lattice[iv + 1, iu] * (1 - au) + lattice[iv + 1, iu + 1] * au
    return _soft(3.0 * (top * (1 - av) + bottom * av - 0.5))


def _flat(u, v, p):
    return np.ones_like(u + v)


def _pole(u, v, p):
    """A round-shaded pole with rings every few widths, so its motion shows in every direction."""
    return 0.6 * np.cos(0.5 * np.pi * u) + 0.4 * _soft(np.sin(0.7 * v + p[1]))


def _draw(canvas: np.ndarray, sprite: Sprite, t: int, camera: np.ndarray) -> None:
    """Blends a sprite's frame `t` into canvas (H, W, 3 float), antialiased at its outline."""
    height, width = canvas.shape[:2]
    tr = sprite.track
    cx, cy, r, a = tr.x[t] - camera[t, 0], tr.y[t] - camera[t, 1], tr.radius[t], tr.angle[t]
    reach = r * 1.5 + 2  # a square's corner reaches r*sqrt(2)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    y0, y1 = (0, height) if sprite.shape == "band" else (max(int(cy - reach), 0), min(int(cy + reach) + 1, height))
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1) + 0.5 - cx
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    # Object coordinates: undo the rotation, then the scale (radius 1 at the outline).
    u = (np.cos(a) * dx + np.sin(a) * dy) / r
    v = (-np.sin(a) * dx + np.cos(a) * dy) / r
    if sprite.shape == "disc":
        extent = np.hypot(u, v)
    elif sprite.shape == "square":
        extent = np.maximum(np.abs(u), np.abs(v))
    else:
        extent = np.abs(u)
    alpha = np.clip((1.0 - extent) * r + 0.5, 0.0, 1.0)[..., None]
    if sprite.opacity is not None:
        if sprite.opacity[t] <= 0:
            return
        alpha = alpha * sprite.opacity[t]
    patch = canvas[y0:y1, x0:x1]
    if sprite.invert:
        patch += alpha * (255.0 - 2.0 * patch)
        return
    shade = sprite.texture(u, v, sprite.params)[..., None]
    colour = sprite.dark + shade * (sprite.light - sprite.dark)
    patch += alpha * (colour - patch)


def _surface_sprite(track: Track, surface: Surface, rng: np.random.Generator) -> Sprite:
    """A disc with a surface, its colours and texture phase jittered per video."""
    jitter = rng.uniform(0.85, 1.15)
    dark, light = (np.clip(np.array(c) * jitter + rng.uniform(-12, 12, 3), 0, 255) for c in (surface.dark, surface.light))
    return Sprite(track, dark, light, surface.texture, _texture_params(rng))


def _texture_params(rng: np.random.Generator) -> np.ndarray:
    # periods per radius, then two phases
    return np.array([rng.uniform(1.6, 2.2), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)])


def _still(frames: int, value: float) -> np.ndarray:
    return np.full(frames, float(value))


@dataclass(frozen=True)
class Scene:
    """One video's worth of random choices; `frames()` draws it."""

    width: int
    height: int
    camera: np.ndarray            # (T, 2) world position of the screen's top-left corner
    lattices: tuple[np.ndarray, np.ndarray]  # the background's coarse and fine value noise
    colours: tuple[np.ndarray, np.ndarray]   # the background's dark and light BGR
    behind: tuple[Sprite, ...]
    actor: Track                  # the actor's centre, tilt and part radius
    parts: tuple[Sprite, ...]     # the two discs and the spots, in drawing order
    front: tuple[Sprite, ...]
    gain: np.ndarray              # (T,) brightness flicker
    noise_sigma: float
    noise_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator, cues: Cues, frames: int, width: int, height: int,
               gop: int) -> Scene:
        unit = min(width, height) / REFERENCE_SIDE
        steps = np.arange(frames, dtype=np.float64)
        # Camera: a slow pan in any direction plus per-frame shake.
        heading = rng.uniform(0, 2 * np.pi)
        pan = rng.uniform(0, 0.6) * unit * np.array([np.cos(heading), np.sin(heading)])
        camera = pan * steps[:, None] + rng.normal(0, 0.3 * unit, (frames, 2))
        lattices = (rng.random((7, 7)), rng.random((23, 23)))
        colours = (_random_colour(rng, 40, 120, 35), _random_colour(rng, 120, 210, 35))

        radius = rng.uniform(0.10, 0.13) * REFERENCE_SIDE * unit
        actor = _place(_motion_track(cues.motion, rng, frames, unit, radius), camera, width, height, rng,
                       reach=(1.1, 2.1))
        parts = [_surface_sprite(_attached(actor, 0.0, dy, 1.0), SURFACES[surface], rng)
                 for surface, dy in ((cues.top, -1.0), (cues.bottom, 1.0))]
        pulse = _pulse(frames, gop) * rng.uniform(0.85, 1.0)
        for row, col in cues.spots:
            track = _attached(actor, (col - 1) * SPOT_SPACING[0], (row - 1) * SPOT_SPACING[1], SPOT_SIZE)
            parts.append(Sprite(track, np.zeros(3), np.zeros(3), _flat, np.zeros(3), opacity=pulse, invert=True))

        behind, front = [], []
        for _ in range(rng.integers(1, 3)):  # grey distractor squares with a drift of their own
            drift = rng.uniform(-0.5, 0.5, 2) * unit
            turn = np.deg2rad(rng.uniform(-1, 1))
            square = Track(drift[0] * steps, drift[1] * steps, rng.uniform(0, 2 * np.pi) + turn * steps,
                           _still(frames, radius * rng.uniform(0.8, 1.2)))
            grey = rng.uniform(60, 190)
            sprite = Sprite(_place(square, camera, width, height, rng),
                            np.full(3, grey * 0.55) + rng.uniform(-8, 8, 3),
                            np.full(3, min(grey * 1.35, 250.0)) + rng.uniform(-8, 8, 3),
                            partial(_blotches, rng.random((5, 5))), np.zeros(3), shape="square")
            (front if rng.random() < 0.3 else behind).append(sprite)
        if rng.random() < 0.5:  # a pole standing in the scene, in front of everything
            pole = Track(_still(frames, rng.uniform(0.1, 0.9) * width + camera[0, 0]), _still(frames, camera[0, 1]),
                         _still(frames, 0.0), _still(frames, rng.uniform(0.035, 0.06) * width))
            grey = rng.uniform(50, 200)
            front.append(Sprite(pole, np.full(3, grey * 0.6), np.full(3, min(grey * 1.3, 250.0)), _pole,
                                _texture_params(rng), shape="band"))
        gain = 1 + rng.uniform(0, 0.04) * np.sin(2 * np.pi * steps / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi))
        return cls(width, height, camera, lattices, colours, tuple(behind), actor, tuple(parts), tuple(front), gain,
                   float(rng.uniform(1.0, 3.0)), int(rng.integers(2**63)))

    @property
    def num_frames(self) -> int:
        return len(self.camera)

    def on_screen(self, track: Track, t: int) -> tuple[float, float, float]:
        """A track's centre x, y and radius on screen at frame t (what tests compare motion with)."""
        return track.x[t] - self.camera[t, 0], track.y[t] - self.camera[t, 1], track.radius[t]

    def frames(self) -> Iterator[np.ndarray]:
        """The video's frames, (H, W, 3) uint8 BGR, drawn one at a time."""
        noise = np.random.default_rng(self.noise_seed)
        xs, ys = np.arange(self.width) + 0.5, np.arange(self.height) + 0.5
        unit = min(self.width, self.height) / REFERENCE_SIDE
        dark, light = self.colours
        for t in range(self.num_frames):
            cx, cy = self.camera[t]
            shade = (0.65 * _value_noise(self.lattices[0], xs + cx, ys + cy, 22 * unit)
                     + 0.35 * _value_noise(self.lattices[1], xs + cx, ys + cy, 5 * unit))
            canvas = dark + shade[..., None] * (light - dark)
            for sprite in (*self.behind, *self.parts, *self.front):
                _draw(canvas, sprite, t, self.camera)
            canvas *= self.gain[t]
            canvas += noise.normal(0.0, self.noise_sigma, canvas.shape)
            yield np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
