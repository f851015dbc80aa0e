// Extraction: any set of frames, any subset of representations, in one decode pass that
// decodes only the GOPs holding requested frames, each once, and each only as far as its
// last requested position. Outputs go to caller-owned buffers.
#pragma once

#include <cstdint>
#include <vector>

#include "video_index.hpp"

namespace cvpipe {

struct ExtractRequest {
  std::vector<int> frames;  // any order, repeats allowed; outputs follow this order
  bool bgr = false;
  bool mv = false;
  bool mv_accumulated = false;
  bool residual = false;
  bool residual_accumulated = false;
  bool blocks = false;
  bool mv_only = false;  // skip_idct decode: only vectors and I-frame pixels are valid
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

// Each pointer, when requested, holds len(frames) x H x W x C elements: bgr uint8 C=3,
// mv int16 C=2, residual int16 C=3.
struct ExtractOutputs {
  uint8_t* bgr = nullptr;
  int16_t* mv = nullptr;
  int16_t* mv_accumulated = nullptr;
  int16_t* residual = nullptr;
  int16_t* residual_accumulated = nullptr;
  std::vector<std::vector<BlockVector>> blocks;  // per requested frame
};

// Throws OutOfRange, UnsupportedVideo or std::invalid_argument for a request that cannot
// be served; cheap, so callers run it before allocating outputs.
void validate_request(const VideoIndex& index, const ExtractRequest& request);

void extract(const VideoIndex& index, const ExtractRequest& request, ExtractOutputs& out);

}  // namespace cvpipe
