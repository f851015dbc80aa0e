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

// YUV420P -> BGR24 the way CoViAR converts (swscale, bicubic), into a tight H*W*3 buffer.
// swscale's SIMD YUV->RGB path converts whole groups of 8 pixels and leaves the last
// W % 8 columns unwritten (CoViAR's garbage columns at width 340). The decoder's frames
// hold whole macroblocks, so we convert a width rounded up to 16, which those buffers
// cover, and keep the first W columns: the same values, every pixel defined.
class BgrConverter {
 public:
  BgrConverter(int width, int height);
  void convert(const AVFrame& frame, uint8_t* bgr);

 private:
  int width_, height_, padded_width_;
  SwsPtr sws_;
  std::vector<uint8_t> staging_;
  int staging_stride_;
};

// For every pixel, where it came from in the GOP's I-frame (CoViAR's accumulated source).
class MotionTrace {
 public:
  MotionTrace(int width, int height);
  void reset();                           // identity, at the I-frame
  void step(const FrameVectors& vectors);  // follow one P-frame's vectors
  // x - source_x, y - source_y per pixel: CoViAR's accumulated MV, (H, W, 2).
  void write_mv(int16_t* out) const;
  // BGR_t(x) - BGR_I(source(x)): CoViAR's accumulated residual, (H, W, 3).
  void write_residual(const uint8_t* bgr, const uint8_t* iframe_bgr, int16_t* out) const;

 private:
  int width_, height_;
  std::vector<int16_t> sx_, sy_, next_x_, next_y_;
};

// One frame's own vectors painted per pixel as dst - src (0 where unpainted): CoViAR's
// non-accumulated MV, (H, W, 2).
void paint_mv(const FrameVectors& vectors, int width, int height, int16_t* out);

// BGR_t(x) - BGR_{t-1}(x - mv(x)) for a painted mv field: CoViAR's non-accumulated residual.
void residual_from_mv(const int16_t* mv, const uint8_t* bgr, const uint8_t* previous_bgr, int width, int height,
                      int16_t* out);

}  // namespace cvpipe
