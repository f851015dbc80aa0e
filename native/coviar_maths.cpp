#include "coviar_maths.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace cvpipe {
namespace {

// Calls paint(dst, src, dx, dy) (flat pixel indices, src = dst + (dx, dy)) for every pixel CoViAR paints: each
// vector covers [dst - w/2, dst + w/2) x [dst - h/2, dst + h/2), a pixel is painted only if
// it and its source both lie inside the frame, and vectors with src == dst are skipped.
// Later vectors overwrite earlier ones, in export order.
template <class Paint>
void for_each_painted(const FrameVectors& vectors, int width, int height, Paint paint) {
  for (size_t i = 0; i < vectors.count; ++i) {
    const AVMotionVector& mv = vectors.data[i];
    const int dx = mv.src_x - mv.dst_x, dy = mv.src_y - mv.dst_y;
    if (dx == 0 && dy == 0) continue;
    const int x0 = std::max({mv.dst_x - mv.w / 2, 0, -dx});
    const int x1 = std::min({mv.dst_x + mv.w / 2, width, width - dx});
    const int y0 = std::max({mv.dst_y - mv.h / 2, 0, -dy});
    const int y1 = std::min({mv.dst_y + mv.h / 2, height, height - dy});
    for (int y = y0; y < y1; ++y) {
      for (int x = x0; x < x1; ++x) paint(y * width + x, (y + dy) * width + (x + dx), dx, dy);
    }
  }
}

}  // namespace

FrameVectors vectors_of(const AVFrame& frame) {
  const AVFrameSideData* sd = av_frame_get_side_data(&frame, AV_FRAME_DATA_MOTION_VECTORS);
  if (!sd) return {};
  return {reinterpret_cast<const AVMotionVector*>(sd->data), sd->size / sizeof(AVMotionVector)};
}

BgrConverter::BgrConverter(int width, int height)
    : width_(width), height_(height), padded_width_((width + 15) / 16 * 16),
      stride_((padded_width_ * 3 + 63) / 64 * 64) {
  sws_.reset(sws_getContext(padded_width_, height, AV_PIX_FMT_YUV420P, padded_width_, height, AV_PIX_FMT_BGR24,
                            SWS_BICUBIC, nullptr, nullptr, nullptr));
  if (!sws_) throw std::runtime_error("swscale cannot convert YUV420P to BGR24 at this size");
}

BgrImage BgrConverter::make_image() const {
  return BgrImage{std::vector<uint8_t>(static_cast<size_t>(stride_) * height_), stride_};
}

void BgrConverter::convert(const AVFrame& frame, BgrImage& image) {
  // Frames from another allocator might not cover the padding: then nothing is converted
  // rather than anything read out of bounds.
  if (frame.linesize[0] < padded_width_ || frame.linesize[1] < padded_width_ / 2 ||
      frame.linesize[2] < padded_width_ / 2) {
    throw std::runtime_error("decoded frame rows are narrower than their macroblocks");
  }
  if (image.stride != stride_ || image.data.size() < static_cast<size_t>(stride_) * height_) image = make_image();
  follow_colour_tags(frame);
  uint8_t* dst[4] = {image.data.data(), nullptr, nullptr, nullptr};
  int dst_stride[4] = {stride_, 0, 0, 0};
  sws_scale(sws_.get(), frame.data, frame.linesize, 0, height_, dst, dst_stride);
}

void BgrConverter::follow_colour_tags(const AVFrame& frame) {
  if (frame.colorspace == colorspace_ && frame.color_range == range_) return;
  // Only the source side changes; what swscale chose for BGR output stays. An untagged
  // stream never gets here, so its conversion is swscale's default, bit for bit.
  int *inv_table = nullptr, *table = nullptr;
  int src_range = 0, dst_range = 0, brightness = 0, contrast = 0, saturation = 0;
  if (sws_getColorspaceDetails(sws_.get(), &inv_table, &src_range, &table, &dst_range, &brightness, &contrast,
                               &saturation) < 0 ||
      sws_setColorspaceDetails(sws_.get(), sws_getCoefficients(frame.colorspace),
                               frame.color_range == AVCOL_RANGE_JPEG, table, dst_range, brightness, contrast,
                               saturation) < 0) {
    throw std::runtime_error("swscale cannot take the frames' colour matrix and range");
  }
  colorspace_ = frame.colorspace;
  range_ = frame.color_range;
}

void copy_bgr(const BgrImage& image, int width, int height, uint8_t* out) {
  const size_t row = static_cast<size_t>(width) * 3;
  for (int y = 0; y < height; ++y) std::memcpy(out + y * row, image.row(y), row);
}

MotionTrace::MotionTrace(int width, int height)
    : width_(width), height_(height), d_(2 * width * height), next_(2 * width * height) {}

void MotionTrace::reset() { std::fill(d_.begin(), d_.end(), int16_t{0}); }

void MotionTrace::step(const FrameVectors& vectors) {
  // source_new(dst) = source_old(src), so d_new(dst) = dst - src + d_old(src).
  next_ = d_;
  for_each_painted(vectors, width_, height_, [&](int dst, int src, int dx, int dy) {
    next_[2 * dst] = static_cast<int16_t>(d_[2 * src] - dx);
    next_[2 * dst + 1] = static_cast<int16_t>(d_[2 * src + 1] - dy);
  });
  d_.swap(next_);
}

void paint_mv(const FrameVectors& vectors, int width, int height, int16_t* out) {
  std::fill(out, out + 2 * width * height, int16_t{0});
  for_each_painted(vectors, width, height, [&](int dst, int, int dx, int dy) {
    out[2 * dst] = static_cast<int16_t>(-dx);
    out[2 * dst + 1] = static_cast<int16_t>(-dy);
  });
}

void compensated_residual(const int16_t* d, const BgrImage& bgr, const BgrImage& reference, int width, int height,
                          int16_t* out) {
  // Displacements are constant over block-sized runs of a row (whole rows of static
  // background), and over a run the difference is two contiguous byte streams, which the
  // compiler vectorises.
  auto pair = [d](int i) {
    uint32_t v;
    std::memcpy(&v, d + 2 * i, sizeof(v));
    return v;
  };
  for (int y = 0; y < height; ++y) {
    const int row = y * width;
    const uint8_t* current_row = bgr.row(y);
    int16_t* out_row = out + 3 * static_cast<size_t>(row);
    for (int x = 0; x < width;) {
      const int dx = d[2 * (row + x)], dy = d[2 * (row + x) + 1];
      const uint32_t run_value = pair(row + x);
      int end = x + 1;
      while (end < width && pair(row + end) == run_value) ++end;
      const uint8_t* cur = current_row + 3 * x;
      const uint8_t* ref = reference.row(y - dy) + 3 * (x - dx);
      int16_t* o = out_row + 3 * x;
      const int count = 3 * (end - x);
      for (int k = 0; k < count; ++k) o[k] = static_cast<int16_t>(cur[k] - ref[k]);
      x = end;
    }
  }
}

}  // namespace cvpipe
