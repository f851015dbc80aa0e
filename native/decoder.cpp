#include "decoder.hpp"

#include <cstdio>
#include <cstring>
#include <string>

#include "errors.hpp"

namespace cvpipe {
namespace {

thread_local std::string t_last_log;

// FFmpeg logs through one process-wide callback. Ours keeps the calling thread's last
// warning or error for exception messages instead of printing it: a batch job over bad
// videos must report per file, not spray stderr.
void capture_log(void* avcl, int level, const char* fmt, va_list args) {
  if (level > AV_LOG_WARNING) return;
  char line[512];
  int print_prefix = 1;
  av_log_format_line2(avcl, level, fmt, args, line, sizeof(line), &print_prefix);
  std::string text(line);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (!text.empty()) t_last_log = text;
}

}  // namespace

std::string last_ffmpeg_log() { return t_last_log; }

void install_ffmpeg_log_capture() { av_log_set_callback(capture_log); }

Decoder::Decoder(const VideoIndex& index, bool mv_only)
    : index_(index), frame_(av_frame_alloc()), packet_(av_packet_alloc()) {
  const AVCodec* codec = avcodec_find_decoder(AV_CODEC_ID_MPEG4);
  if (!codec) throw UnsupportedVideo("this FFmpeg build has no MPEG-4 Part 2 decoder");
  ctx_.reset(avcodec_alloc_context3(codec));
  if (!ctx_ || !frame_ || !packet_) throw std::bad_alloc();
  if (!index.extradata.empty()) {
    ctx_->extradata = static_cast<uint8_t*>(av_mallocz(index.extradata.size() + AV_INPUT_BUFFER_PADDING_SIZE));
    if (!ctx_->extradata) throw std::bad_alloc();
    std::memcpy(ctx_->extradata, index.extradata.data(), index.extradata.size());
    ctx_->extradata_size = static_cast<int>(index.extradata.size());
  }
  ctx_->width = index.width;
  ctx_->height = index.height;
  // The container's colour tags, which the decoded frames then carry (a VOL that states
  // its own overrides them).
  ctx_->colorspace = static_cast<AVColorSpace>(index.color_space);
  ctx_->color_range = static_cast<AVColorRange>(index.color_range);
  ctx_->thread_count = 1;
  ctx_->export_side_data |= AV_CODEC_EXPORT_DATA_MVS;
  ctx_->err_recognition = AV_EF_BITSTREAM | AV_EF_BUFFER | AV_EF_EXPLODE;
  if (mv_only) ctx_->skip_idct = AVDISCARD_ALL;
  const int err = avcodec_open2(ctx_.get(), codec, nullptr);
  if (err < 0) fail("opening the decoder failed: " + av_error_string(err));
}

void Decoder::fail(const std::string& what) const {
  std::string message = "'" + index_.path + "': GOP " + std::to_string(gop_) + ": " + what;
  const std::string log = last_ffmpeg_log();
  if (!log.empty()) message += " (FFmpeg: " + log + ")";
  throw InvalidVideo(message);
}

bool Decoder::drain_frames(const std::function<bool(const AVFrame&)>& on_frame, int& produced) {
  for (;;) {
    const int err = avcodec_receive_frame(ctx_.get(), frame_.get());
    if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return true;
    if (err < 0) fail("decoding failed: " + av_error_string(err));
    if (frame_->decode_error_flags || (frame_->flags & AV_FRAME_FLAG_CORRUPT)) {
      fail("frame " + std::to_string(produced) + " of the GOP is corrupt");
    }
    if (frame_->width != index_.width || frame_->height != index_.height || frame_->format != AV_PIX_FMT_YUV420P) {
      fail("a frame is " + std::to_string(frame_->width) + "x" + std::to_string(frame_->height) +
           " but the stream header says " + std::to_string(index_.width) + "x" + std::to_string(index_.height));
    }
    ++produced;
    const bool more = on_frame(*frame_);
    av_frame_unref(frame_.get());
    if (!more) return false;
  }
}

void Decoder::decode_gop(int gop, const std::function<bool(const AVFrame&)>& on_frame) {
  gop_ = gop;
  const int first = index_.gop_packets[gop];
  const int last = gop + 1 < index_.num_gops() ? index_.gop_packets[gop + 1] : static_cast<int>(index_.packets.size());
  t_last_log.clear();
  avcodec_flush_buffers(ctx_.get());
  int produced = 0, expected = 0;
  bool more = true;
  for (int p = first; p < last && more; ++p) {
    const PacketSpan& span = index_.packets[p];
    expected += span.frames;
    // The packet borrows the index's bytes (padding included); send_packet copies them.
    packet_->data = const_cast<uint8_t*>(index_.data.data() + span.offset);
    packet_->size = static_cast<int>(span.size);
    const int err = avcodec_send_packet(ctx_.get(), packet_.get());
    packet_->data = nullptr;
    packet_->size = 0;
    if (err < 0 && err != AVERROR(EAGAIN)) fail("packet " + std::to_string(p) + " is corrupt: " + av_error_string(err));
    more = drain_frames(on_frame, produced);
  }
  if (!more) return;
  const int err = avcodec_send_packet(ctx_.get(), nullptr);
  if (err < 0 && err != AVERROR_EOF) fail("flushing the decoder failed: " + av_error_string(err));
  if (!drain_frames(on_frame, produced)) return;
  if (produced != expected) {
    fail("the decoder produced " + std::to_string(produced) + " frames where the bitstream holds " +
         std::to_string(expected) + " (truncated or corrupt stream)");
  }
}

}  // namespace cvpipe
