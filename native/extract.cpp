#include "extract.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

#include "coviar_maths.hpp"
#include "decoder.hpp"
#include "errors.hpp"

namespace cvpipe {
namespace {

struct Slot {
  int position;  // in the GOP
  size_t index;  // into the request's outputs
};

BlockVector to_block(const AVMotionVector& v) {
  BlockVector b;
  b.source = v.source;
  b.w = v.w;
  b.h = v.h;
  b.src_x = v.src_x;
  b.src_y = v.src_y;
  b.dst_x = v.dst_x;
  b.dst_y = v.dst_y;
  b.flags = v.flags;
  b.motion_x = v.motion_x;
  b.motion_y = v.motion_y;
  b.motion_scale = v.motion_scale;
  return b;
}

// Decodes one GOP up to its last requested position and fills the slots that lie in it.
class GopExtractor {
 public:
  GopExtractor(const VideoIndex& index, const ExtractRequest& request, ExtractOutputs& out)
      : index_(index),
        request_(request),
        out_(out),
        w_(index.width),
        h_(index.height),
        pixels_(static_cast<size_t>(w_) * h_),
        decoder_(index, request.mv_only),
        converter_(w_, h_),
        trace_(w_, h_),
        current_bgr_(pixels_ * 3),
        previous_bgr_(pixels_ * 3),
        iframe_bgr_(pixels_ * 3),
        mv_scratch_(pixels_ * 2) {}

  void run(int gop, const std::vector<Slot>& slots) {
    int last = 0;
    for (const Slot& s : slots) last = std::max(last, s.position);
    const bool trace = request_.mv_accumulated || request_.residual_accumulated;
    std::vector<bool> bgr_needed(last + 1, false);
    for (const Slot& s : slots) {
      if (request_.bgr || request_.residual || request_.residual_accumulated) bgr_needed[s.position] = true;
      if (request_.residual && s.position > 0) bgr_needed[s.position - 1] = true;
    }
    if (request_.residual_accumulated) bgr_needed[0] = true;

    int position = 0;
    decoder_.decode_gop(gop, [&](const AVFrame& frame) {
      const FrameVectors vectors = vectors_of(frame);
      if (bgr_needed[position]) {
        current_bgr_.swap(previous_bgr_);
        converter_.convert(frame, current_bgr_.data());
        if (position == 0 && request_.residual_accumulated) iframe_bgr_ = current_bgr_;
      }
      if (trace) {
        if (position == 0) {
          trace_.reset();
        } else {
          trace_.step(vectors);
        }
      }
      for (const Slot& s : slots) {
        if (s.position == position) fill(s.index, position, vectors);
      }
      return ++position <= last;
    });
    if (position <= last) {
      throw InvalidVideo("'" + index_.path + "': GOP " + std::to_string(gop) + " decoded to " +
                         std::to_string(position) + " frames, fewer than indexed");
    }
  }

 private:
  void fill(size_t slot, int position, const FrameVectors& vectors) {
    if (request_.bgr) std::memcpy(out_.bgr + slot * pixels_ * 3, current_bgr_.data(), pixels_ * 3);
    if (request_.mv || request_.residual) {
      int16_t* mv = request_.mv ? out_.mv + slot * pixels_ * 2 : mv_scratch_.data();
      paint_mv(position == 0 ? FrameVectors{} : vectors, w_, h_, mv);
      if (request_.residual) {
        int16_t* res = out_.residual + slot * pixels_ * 3;
        if (position == 0) {
          std::fill(res, res + pixels_ * 3, int16_t{0});
        } else {
          residual_from_mv(mv, current_bgr_.data(), previous_bgr_.data(), w_, h_, res);
        }
      }
    }
    if (request_.mv_accumulated) trace_.write_mv(out_.mv_accumulated + slot * pixels_ * 2);
    if (request_.residual_accumulated) {
      trace_.write_residual(current_bgr_.data(), iframe_bgr_.data(), out_.residual_accumulated + slot * pixels_ * 3);
    }
    if (request_.blocks) {
      auto& blocks = out_.blocks[slot];
      blocks.clear();
      for (size_t i = 0; i < vectors.count; ++i) blocks.push_back(to_block(vectors.data[i]));
    }
  }

  const VideoIndex& index_;
  const ExtractRequest& request_;
  ExtractOutputs& out_;
  const int w_, h_;
  const size_t pixels_;
  Decoder decoder_;
  BgrConverter converter_;
  MotionTrace trace_;
  std::vector<uint8_t> current_bgr_, previous_bgr_, iframe_bgr_;
  std::vector<int16_t> mv_scratch_;
};

}  // namespace

void validate_request(const VideoIndex& index, const ExtractRequest& request) {
  if (index.has_b_frames) {
    throw UnsupportedVideo("'" + index.path +
                           "' has B-VOPs; FFmpeg exports wrong motion vectors for MPEG-4 B-frames, so cvpipe "
                           "refuses them. Re-encode without B-frames (`cvpipe encode`, or ffmpeg -bf 0)");
  }
  for (int f : request.frames) {
    if (f < 0 || f >= index.num_frames()) {
      throw OutOfRange("frame " + std::to_string(f) + " is out of range: '" + index.path + "' has " +
                       std::to_string(index.num_frames()) + " decodable frames");
    }
    if (request.mv_only && (request.residual || request.residual_accumulated ||
                            (request.bgr && index.frame_types[f] != 'I'))) {
      throw std::invalid_argument(
          "mv_only decoding skips the inverse transform of inter blocks: it serves motion vectors and I-frame "
          "pixels only (frame " + std::to_string(f) + " is a " + std::string(1, index.frame_types[f]) +
          "-frame)");
    }
  }
}

void extract(const VideoIndex& index, const ExtractRequest& request, ExtractOutputs& out) {
  validate_request(index, request);
  if (request.blocks) out.blocks.assign(request.frames.size(), {});
  std::map<int, std::vector<Slot>> by_gop;
  for (size_t i = 0; i < request.frames.size(); ++i) {
    const int frame = request.frames[i];
    const int gop = index.gop_of(frame);
    by_gop[gop].push_back({frame - index.gop_starts[gop], i});
  }
  if (by_gop.empty()) return;
  GopExtractor extractor(index, request, out);
  for (const auto& [gop, slots] : by_gop) extractor.run(gop, slots);
}

}  // namespace cvpipe
