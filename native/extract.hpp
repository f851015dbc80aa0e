// Extraction: for each representation any set of frames, all served by one decode pass
// that decodes only the GOPs holding requested frames, each once and only as far as its
// last requested position. GOPs can be spread over threads. Outputs go to caller-owned
// buffers.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "video_index.hpp"

namespace cvpipe {

enum Representation : int {
  kBgr,                  // decoded frame, uint8 (H, W, 3)
  kMv,                   // the frame's own vectors painted per pixel, int16 (H, W, 2)
  kMvAccumulated,        // traced back to the GOP's I-frame, int16 (H, W, 2)
  kResidual,             // BGR minus the motion-compensated previous frame, int16 (H, W, 3)
  kResidualAccumulated,  // BGR minus the traced-back I-frame, int16 (H, W, 3)
  kBlocks,               // the exported block vectors, a list per frame
  kNumRepresentations,
};
constexpr int kNumDense = kBlocks;
constexpr std::array<int, kNumDense> kChannels = {3, 2, 2, 3, 3};

struct ExtractRequest {
  // Per representation, the frames wanted (any order, repeats allowed); outputs follow it.
  std::array<std::vector<int>, kNumRepresentations> frames;
  bool mv_only = false;  // skip_idct decode: only vectors and I-frame pixels are valid
  int threads = 1;       // GOPs decoded in parallel
};

// AVMotionVector's fields, copied one by one (the FFmpeg struct has padding).
struct BlockVector {
  int32_t source;
  uint8_t w, h;
  int16_t src_x, src_y, dst_x, dst_y;
  uint64_t flags;
  int32_t motion_x, motion_y;
  uint16_t motion_scale;
};

struct ExtractOutputs {
  // For each dense representation with frames requested: len(frames) x H x W x channels
  // elements, uint8_t for kBgr and int16_t for the others.
  std::array<void*, kNumDense> dense{};
  std::vector<std::vector<BlockVector>> blocks;  // per requested kBlocks frame
};

// Throws OutOfRange, UnsupportedVideo or std::invalid_argument for a request that cannot
// be served; cheap, so callers run it before allocating outputs.
void validate_request(const VideoIndex& index, const ExtractRequest& request);

void extract(const VideoIndex& index, const ExtractRequest& request, ExtractOutputs& out);

}  // namespace cvpipe
