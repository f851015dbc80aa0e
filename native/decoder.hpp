// The MPEG-4 Part 2 decoder with motion-vector export: decodes a run of packets from a
// clean state (one GOP) and hands each frame to a callback, send/receive loop and
// drain included. Bitstream errors become InvalidVideo with FFmpeg's last log line.
#pragma once

#include <functional>

#include "ffmpeg_utils.hpp"
#include "video_index.hpp"

namespace cvpipe {

class Decoder {
 public:
  // `mv_only` skips dequantisation and IDCT of inter blocks (skip_idct): vectors and
  // I-frames stay exact, P-frame pixels do not.
  Decoder(const VideoIndex& index, bool mv_only);

  // Decodes GOP `gop` from a clean state and calls `on_frame` with each decoded frame in
  // order. Stops early once `on_frame` returns false.
  void decode_gop(int gop, const std::function<bool(const AVFrame&)>& on_frame);

 private:
  [[noreturn]] void fail(const std::string& what) const;
  int gop_ = -1;  // being decoded, for messages
  // Passes every frame the decoder has ready to `on_frame`; false once it asked to stop.
  bool drain_frames(const std::function<bool(const AVFrame&)>& on_frame, int& produced);

  const VideoIndex& index_;
  CodecContextPtr ctx_;
  FramePtr frame_;
  PacketPtr packet_;
};

// Last FFmpeg error or warning logged on this thread ("" if none); decoding errors quote it.
std::string last_ffmpeg_log();
void install_ffmpeg_log_capture();

}  // namespace cvpipe
