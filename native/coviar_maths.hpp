// CoViAR's representations computed from decoded frames and their exported vectors:
// BGR conversion, the per-frame vector painting, the trace back to the GOP's I-frame, and
// the residual as a pixel-domain difference. REFERENCE.md section 2 states the rules.
#pragma once

#include <cstdint>
#include <vector>

#include "ffmpeg_utils.hpp"

extern "C" {
#include <libavutil/motion_vector.h>
}

namespace cvpipe {

// The motion vectors FFmpeg exported for a frame (none for an I-frame).
struct FrameVectors {
  const AVMotionVector* data = nullptr;
  size_t count = 0;
};
FrameVectors vectors_of(const AVFrame& frame);

// A BGR24 picture in rows of `stride` bytes (stride >= 3 * width).
struct BgrImage {
  std::vector<uint8_t> data;
  int stride = 0;
  const uint8_t* row(int y) const { return data.data() + static_cast<size_t>(y) * stride; }
};

// YUV420P -> BGR24 the way CoViAR converts (swscale, bicubic), with the matrix and range
// the frames are tagged with, as FFmpeg's command line converts them (untagged: BT.601,
// limited range, CoViAR's case).
// swscale's SIMD YUV->RGB path converts whole groups of 8 pixels and leaves the last
// W % 8 columns unwritten (CoViAR's garbage columns at width 340). The decoder's frames
// hold whole macroblocks, so we convert a width rounded up to 16, which those buffers
// cover, into rows wide enough for it, and use the first W columns: the same values,
// every pixel defined.
class BgrConverter {
 public:
  BgrConverter(int width, int height);
  BgrImage make_image() const;  // sized for convert()
  void convert(const AVFrame& frame, BgrImage& image);

 private:
  void follow_colour_tags(const AVFrame& frame);

  int width_, height_, padded_width_, stride_;
  SwsPtr sws_;
  AVColorSpace colorspace_ = AVCOL_SPC_UNSPECIFIED;  // what sws_ converts from
  AVColorRange range_ = AVCOL_RANGE_UNSPECIFIED;
};

// Copies the W x H picture out of `image` into a tight (H, W, 3) array.
void copy_bgr(const BgrImage& image, int width, int height, uint8_t* out);

// For every pixel x, its displacement d(x) = x - source(x), where source(x) is the pixel of
// the GOP's I-frame it was traced back to: CoViAR's accumulated MV, kept as (H, W, 2) int16
// so that it is its own output.
class MotionTrace {
 public:
  MotionTrace(int width, int height);
  void reset();                           // zero, at the I-frame
  void step(const FrameVectors& vectors);  // follow one P-frame's vectors
  const int16_t* displacement() const { return d_.data(); }

 private:
  int width_, height_;
  std::vector<int16_t> d_, next_;
};

// One frame's own vectors painted per pixel as dst - src (0 where unpainted): CoViAR's
// non-accumulated MV, (H, W, 2).
void paint_mv(const FrameVectors& vectors, int width, int height, int16_t* out);

// BGR(x) - reference_BGR(x - d(x)) for a displacement field d (H, W, 2): CoViAR's residual,
// accumulated when d is the trace and the reference the I-frame, per frame when d is the
// frame's own MV and the reference the previous frame.
void compensated_residual(const int16_t* d, const BgrImage& bgr, const BgrImage& reference, int width, int height,
                          int16_t* out);

}  // namespace cvpipe
