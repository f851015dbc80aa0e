#include "extract.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "coviar_maths.hpp"
#include "decoder.hpp"
#include "errors.hpp"

namespace cvpipe {
namespace {

struct Slot {
  int position;  // in the GOP
  int representation;
  size_t index;  // into that representation's outputs
};

BlockVector to_block(const AVMotionVector& v) {
  BlockVector b;
  std::memset(&b, 0, sizeof(b));  // the padding reaches Python as bytes of the numpy record
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
// Owns its decoder and scratch buffers: one per thread.
class GopExtractor {
 public:
  GopExtractor(const VideoIndex& index, bool mv_only, ExtractOutputs& out)
      : out_(out),
        w_(index.width),
        h_(index.height),
        pixels_(static_cast<size_t>(w_) * h_),
        decoder_(index, mv_only),
        converter_(w_, h_),
        trace_(w_, h_),
        current_bgr_(converter_.make_image()),
        previous_bgr_(converter_.make_image()),
        iframe_bgr_(converter_.make_image()),
        mv_scratch_(pixels_ * 2) {}

  void run(int gop, const std::vector<Slot>& slots) {
    int last = 0;
    bool trace = false, iframe_reference = false;
    for (const Slot& s : slots) {
      last = std::max(last, s.position);
      trace |= s.representation == kMvAccumulated || s.representation == kResidualAccumulated;
      iframe_reference |= s.representation == kResidualAccumulated;
    }
    std::vector<bool> bgr_needed(last + 1, false);
    for (const Slot& s : slots) {
      const int r = s.representation;
      if (r == kBgr || r == kResidual || r == kResidualAccumulated) bgr_needed[s.position] = true;
      if (r == kResidual && s.position > 0) bgr_needed[s.position - 1] = true;
    }
    if (iframe_reference) bgr_needed[0] = true;

    int position = 0;
    decoder_.decode_gop(gop, [&](const AVFrame& frame) {
      const FrameVectors vectors = position == 0 ? FrameVectors{} : vectors_of(frame);
      if (bgr_needed[position]) {
        // The I-frame, when residuals refer to it, is converted into its own image and stays
        // there; otherwise the current image becomes the previous one.
        if (position == 0 && iframe_reference) {
          converter_.convert(frame, iframe_bgr_);
          current_ = &iframe_bgr_;
        } else {
          std::swap(previous_, current_);
          if (current_ == &iframe_bgr_) current_ = previous_ == &current_bgr_ ? &previous_bgr_ : &current_bgr_;
          converter_.convert(frame, *current_);
        }
      }
      if (trace) {
        if (position == 0) {
          trace_.reset();
        } else {
          trace_.step(vectors);
        }
      }
      for (const Slot& s : slots) {
        if (s.position == position) fill(s, vectors);
      }
      return ++position <= last;
    });
  }

 private:
  template <class T>
  T* dense(const Slot& s) const {
    return static_cast<T*>(out_.dense[s.representation]) + s.index * pixels_ * kChannels[s.representation];
  }

  void fill(const Slot& s, const FrameVectors& vectors) {
    switch (s.representation) {
      case kBgr:
        copy_bgr(*current_, w_, h_, dense<uint8_t>(s));
        break;
      case kMv:
        paint_mv(vectors, w_, h_, dense<int16_t>(s));
        break;
      case kMvAccumulated:
        std::memcpy(dense<int16_t>(s), trace_.displacement(), pixels_ * 2 * sizeof(int16_t));
        break;
      case kResidual: {
        paint_mv(vectors, w_, h_, mv_scratch_.data());
        // At the I-frame there are no vectors and the reference is the frame itself: zero.
        const BgrImage& reference = s.position == 0 ? *current_ : *previous_;
        compensated_residual(mv_scratch_.data(), *current_, reference, w_, h_, dense<int16_t>(s));
        break;
      }
      case kResidualAccumulated:
        compensated_residual(trace_.displacement(), *current_, iframe_bgr_, w_, h_,
                             dense<int16_t>(s));
        break;
      case kBlocks: {
        auto& blocks = out_.blocks[s.index];
        blocks.clear();
        for (size_t i = 0; i < vectors.count; ++i) blocks.push_back(to_block(vectors.data[i]));
        break;
      }
    }
  }

  ExtractOutputs& out_;
  const int w_, h_;
  const size_t pixels_;
  Decoder decoder_;
  BgrConverter converter_;
  MotionTrace trace_;
  BgrImage current_bgr_, previous_bgr_, iframe_bgr_;
  // Which images hold the current and previous frames: pointers, so no picture is copied.
  BgrImage* current_ = &current_bgr_;
  BgrImage* previous_ = &previous_bgr_;
  std::vector<int16_t> mv_scratch_;
};

// Runs `work(extractor, gop_group)` over all groups on `threads` threads, each with its own
// extractor; the first exception stops the rest and is rethrown.
void run_parallel(const VideoIndex& index, const ExtractRequest& request, ExtractOutputs& out,
                  const std::vector<std::pair<int, std::vector<Slot>>>& groups) {
  const size_t threads = std::min<size_t>(std::max(request.threads, 1), groups.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    try {
      GopExtractor extractor(index, request.mv_only, out);
      for (size_t i; !failed && (i = next++) < groups.size();) extractor.run(groups[i].first, groups[i].second);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

void validate_request(const VideoIndex& index, const ExtractRequest& request) {
  if (index.has_b_frames) {
    throw UnsupportedVideo("'" + index.path +
                           "' has B-VOPs; FFmpeg exports wrong motion vectors for MPEG-4 B-frames, so cvpipe "
                           "refuses them. Re-encode without B-frames (`cvpipe encode`, or ffmpeg -bf 0)");
  }
  for (int r = 0; r < kNumRepresentations; ++r) {
    for (int f : request.frames[r]) {
      if (f < 0 || f >= index.num_frames()) {
        throw OutOfRange("frame " + std::to_string(f) + " is out of range: '" + index.path + "' has " +
                         std::to_string(index.num_frames()) + " decodable frames");
      }
      const bool pixels = r == kResidual || r == kResidualAccumulated || (r == kBgr && index.frame_types[f] != 'I');
      if (request.mv_only && pixels) {
        throw std::invalid_argument(
            "mv_only decoding skips the inverse transform of inter blocks: it serves motion vectors and I-frame "
            "pixels only (frame " + std::to_string(f) + " is a " + std::string(1, index.frame_types[f]) +
            "-frame)");
      }
    }
  }
}

void extract(const VideoIndex& index, const ExtractRequest& request, ExtractOutputs& out) {
  validate_request(index, request);
  out.blocks.assign(request.frames[kBlocks].size(), {});
  std::map<int, std::vector<Slot>> by_gop;
  for (int r = 0; r < kNumRepresentations; ++r) {
    const auto& frames = request.frames[r];
    for (size_t i = 0; i < frames.size(); ++i) {
      const int gop = index.gop_of(frames[i]);
      by_gop[gop].push_back({frames[i] - index.gop_starts[gop], r, i});
    }
  }
  if (by_gop.empty()) return;
  run_parallel(index, request, out, {by_gop.begin(), by_gop.end()});
}

}  // namespace cvpipe
