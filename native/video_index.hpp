// One scan of a file: demux every packet of its MPEG-4 Part 2 stream into memory and
// index it (frame types, GOP table, size, rate) without decoding. The index is immutable
// afterwards, so any number of threads can extract from it at once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cvpipe {

struct PacketSpan {
  size_t offset;  // into VideoIndex::data
  size_t size;
  int frames;     // coded VOPs in the packet: decoded frames it yields
};

struct VideoIndex {
  std::string path;
  std::string container;  // libavformat's demuxer name ("m4v", "avi", "mov,mp4,...")
  int width = 0;
  int height = 0;
  int fps_num = 0;
  int fps_den = 1;
  int color_space = 2;             // AVColorSpace the container tags (2: unspecified)
  int color_range = 0;             // AVColorRange the container tags (0: unspecified)
  std::vector<uint8_t> extradata;  // VOS/VOL headers, from the container or the stream
  std::vector<uint8_t> data;       // packet payloads, each followed by zeroed padding
  std::vector<PacketSpan> packets; // from the first I-VOP on
  std::vector<char> frame_types;   // per decodable frame: 'I', 'P', 'B' or 'S'
  std::vector<int> gop_starts;     // first frame of each GOP
  std::vector<int> gop_packets;    // first packet of each GOP
  int leading_packets_dropped = 0; // packets before the first I-VOP (undecodable)
  bool has_b_frames = false;

  int num_frames() const { return static_cast<int>(frame_types.size()); }
  int num_gops() const { return static_cast<int>(gop_starts.size()); }
  // GOP holding `frame` (which must be in range).
  int gop_of(int frame) const;
  // One past the last frame of GOP `gop`.
  int gop_end(int gop) const;
};

// Throws FileMissing, InvalidVideo or UnsupportedVideo with a message naming the file.
VideoIndex index_video(const std::string& path);

}  // namespace cvpipe
