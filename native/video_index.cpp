#include "video_index.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <stdexcept>

#include "bitstream.hpp"
#include "errors.hpp"
#include "ffmpeg_utils.hpp"

namespace cvpipe {
namespace {

constexpr int kMaxDimension = 8191;  // 13-bit width and height fields in the VOL header

const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

// Only a regular file we may read goes to FFmpeg: a FIFO or a device would block the
// demuxer forever, and a path that C sees shorter than Python does is another file.
void check_readable(const std::string& path) {
  if (path.find('\0') != std::string::npos) {
    throw std::invalid_argument("the path '" + std::string(path.c_str()) + "\\0...' holds a NUL byte");
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == EACCES) throw FileUnreadable("Permission denied: '" + path + "'");
    throw FileMissing("No such file: '" + path + "'");
  }
  if (S_ISDIR(st.st_mode)) throw InvalidVideo("'" + path + "' is a directory, not a video");
  if (!S_ISREG(st.st_mode)) {
    throw InvalidVideo("'" + path + "' is " + file_kind(st.st_mode) + ", not a regular file: cvpipe reads video files only");
  }
  if (::access(path.c_str(), R_OK) != 0) throw FileUnreadable("Permission denied: '" + path + "'");
}

std::string codec_description(AVCodecID id) {
  const AVCodecDescriptor* d = avcodec_descriptor_get(id);
  if (!d) return "an unknown codec";
  return std::string(d->name) + (d->long_name ? std::string(" (") + d->long_name + ")" : "");
}

// Frame rate of a raw stream from its VOP timestamps: the most common step between
// consecutive coded VOPs, in units of the VOL's time_increment_resolution.
void rate_from_vop_times(const VolHeader& vol, const std::vector<VopHeader>& vops, int& num, int& den) {
  if (vol.fixed_vop_time_increment > 0) {
    num = vol.time_increment_resolution;
    den = vol.fixed_vop_time_increment;
    return;
  }
  std::map<long, int> steps;
  long previous = -1, seconds = 0;
  for (const VopHeader& v : vops) {
    if (v.time_increment < 0) continue;
    seconds += v.modulo_seconds;
    const long t = seconds * vol.time_increment_resolution + v.time_increment;
    if (previous >= 0 && t > previous) ++steps[t - previous];
    previous = t;
  }
  if (steps.empty()) return;
  const auto common = std::max_element(steps.begin(), steps.end(),
                                       [](const auto& a, const auto& b) { return a.second < b.second; });
  num = vol.time_increment_resolution;
  den = static_cast<int>(common->first);
}

}  // namespace

int VideoIndex::gop_of(int frame) const {
  return static_cast<int>(std::upper_bound(gop_starts.begin(), gop_starts.end(), frame) - gop_starts.begin()) - 1;
}

int VideoIndex::gop_end(int gop) const {
  return gop + 1 < num_gops() ? gop_starts[gop + 1] : num_frames();
}

VideoIndex index_video(const std::string& path) {
  check_readable(path);

  // Local files only: the file protocol named explicitly, so that a file called
  // "http:/host/x.m4v" is that file and not a request to host; the whitelist keeps any
  // nested open of a demuxer from reaching another protocol.
  const std::string url = "file:" + path;
  AVFormatContext* raw_fmt = nullptr;
  AVDictionary* options = nullptr;  // C calls only until it is freed: nothing can throw past it
  av_dict_set(&options, "protocol_whitelist", "file", 0);
  int err = avformat_open_input(&raw_fmt, url.c_str(), nullptr, &options);
  av_dict_free(&options);
  if (err < 0) throw InvalidVideo("'" + path + "' is not a video FFmpeg can open: " + av_error_string(err));
  FormatContextPtr fmt(raw_fmt);

  const int stream = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (stream < 0) throw InvalidVideo("'" + path + "' has no video stream");
  const AVCodecParameters* par = fmt->streams[stream]->codecpar;
  // FFmpeg's tty demuxer takes any text file for ANSI art: that is not a video to re-encode.
  if (par->codec_id == AV_CODEC_ID_ANSI) throw InvalidVideo("'" + path + "' is a text file, not a video");
  if (par->codec_id != AV_CODEC_ID_MPEG4) {
    throw UnsupportedVideo("'" + path + "' is coded with " + codec_description(par->codec_id) +
                           "; cvpipe extracts from MPEG-4 Part 2 only (re-encode it with `cvpipe encode`)");
  }

  VideoIndex index;
  index.path = path;
  index.container = fmt->iformat->name;
  VolHeader vol;
  std::vector<VopHeader> scratch;
  if (par->extradata && par->extradata_size > 0) {
    index.extradata.assign(par->extradata, par->extradata + par->extradata_size);
    parse_headers(index.extradata.data(), index.extradata.size(), vol, scratch);
  }

  std::vector<VopHeader> all_vops;
  PacketPtr pkt(av_packet_alloc());
  if (!pkt) throw std::bad_alloc();
  int frames = 0;
  while ((err = av_read_frame(fmt.get(), pkt.get())) >= 0) {
    if (pkt->stream_index != stream || pkt->size <= 0) {
      av_packet_unref(pkt.get());
      continue;
    }
    std::vector<VopHeader> vops;
    parse_headers(pkt->data, pkt->size, vol, vops);
    if (index.extradata.empty()) {
      const size_t config = config_header_length(pkt->data, pkt->size);
      index.extradata.assign(pkt->data, pkt->data + config);
    }
    const auto first_coded = std::find_if(vops.begin(), vops.end(), [](const VopHeader& v) { return v.coded; });
    const bool starts_gop = first_coded != vops.end() && first_coded->type == 'I';
    if (index.gop_starts.empty() && !starts_gop) {
      ++index.leading_packets_dropped;
      av_packet_unref(pkt.get());
      continue;
    }
    if (starts_gop) {
      index.gop_starts.push_back(frames);
      index.gop_packets.push_back(static_cast<int>(index.packets.size()));
    }
    PacketSpan span{index.data.size(), static_cast<size_t>(pkt->size), 0};
    for (const VopHeader& v : vops) {
      if (v.type == 'B') index.has_b_frames = true;
      if (!v.coded) continue;
      index.frame_types.push_back(v.type);
      ++span.frames;
    }
    frames += span.frames;
    index.data.insert(index.data.end(), pkt->data, pkt->data + pkt->size);
    index.data.insert(index.data.end(), AV_INPUT_BUFFER_PADDING_SIZE, 0);
    index.packets.push_back(span);
    all_vops.insert(all_vops.end(), vops.begin(), vops.end());
    av_packet_unref(pkt.get());
  }
  if (err != AVERROR_EOF) {
    throw InvalidVideo("'" + path + "': reading the container failed: " + av_error_string(err));
  }

  index.color_space = par->color_space;
  index.color_range = par->color_range;
  index.width = par->width > 0 ? par->width : vol.width;
  index.height = par->height > 0 ? par->height : vol.height;
  // The stream's own VOP timestamps are authoritative (a raw stream has nothing else, and
  // remuxed AVIs can state a doubled rate); the container's rate is the fallback.
  rate_from_vop_times(vol, all_vops, index.fps_num, index.fps_den);
  const AVStream* st = fmt->streams[stream];
  const AVRational rate = st->avg_frame_rate.num > 0 && st->avg_frame_rate.den > 0 ? st->avg_frame_rate : st->r_frame_rate;
  if (index.fps_num <= 0 && rate.num > 0 && rate.den > 0) {
    index.fps_num = rate.num;
    index.fps_den = rate.den;
  }
  if (index.num_frames() == 0) {
    throw InvalidVideo("'" + path + "' holds no decodable MPEG-4 Part 2 frame (no I-VOP found)");
  }
  if (index.width <= 0 || index.height <= 0) {
    throw InvalidVideo("'" + path + "': the stream does not state its frame size (no VOL header)");
  }
  // MPEG-4 Part 2 allows 8191x8191; a corrupt header claiming more must not drive the
  // output allocations.
  if (index.width > kMaxDimension || index.height > kMaxDimension) {
    throw InvalidVideo("'" + path + "': frame size " + std::to_string(index.width) + "x" +
                       std::to_string(index.height) + " exceeds MPEG-4 Part 2's limit of " +
                       std::to_string(kMaxDimension));
  }
  // An I-VOP codes every macroblock, each in well over one bit (MCBPC, CBPY and six DC
  // sizes at the least), so the first one is held to that before the size drives the
  // decoder's and the outputs' allocations: a forged VOL cannot make 300 bytes cost
  // gigabytes. (Only the first: a later one cut short is a truncation, whose earlier GOPs
  // stay readable.)
  const size_t macroblocks = static_cast<size_t>((index.width + 15) / 16) * static_cast<size_t>((index.height + 15) / 16);
  const size_t first_bytes = index.packets[index.gop_packets[0]].size;
  if (first_bytes * 8 < macroblocks) {
    throw InvalidVideo("'" + path + "': its header declares " + std::to_string(index.width) + "x" +
                       std::to_string(index.height) + " (" + std::to_string(macroblocks) +
                       " macroblocks), but its first I-VOP has only " + std::to_string(first_bytes) +
                       " bytes, too few to code them (a corrupt or forged header)");
  }
  return index;
}

}  // namespace cvpipe
