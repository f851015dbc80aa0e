// Just enough of the MPEG-4 Part 2 syntax (ISO/IEC 14496-2, 6.2.3 and 6.2.5) to index a
// stream without decoding it: the VOL header (size, timing) and each VOP's coding type and
// vop_coded bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cvpipe {

struct VolHeader {
  bool found = false;
  int width = 0;   // 0 when the VOL is not rectangular
  int height = 0;
  int time_increment_resolution = 0;
  int fixed_vop_time_increment = 0;  // 0 when the rate is not fixed
  int time_increment_bits = 1;
};

struct VopHeader {
  char type;   // 'I', 'P', 'B' or 'S' (sprite / GMC)
  bool coded;  // false for a not-coded VOP, which the decoder turns into no frame
  int modulo_seconds;  // whole seconds elapsed since the previous VOP (modulo_time_base)
  int time_increment;  // in 1/time_increment_resolution of a second, -1 if unknown
};

// Parses every VOL and VOP header in `data`. A VOL updates `vol` (later VOPs are read
// with its timing fields); each VOP found is appended to `vops`.
void parse_headers(const uint8_t* data, size_t size, VolHeader& vol, std::vector<VopHeader>& vops);

// Bytes before the first VOP start code: the VOS/VO/VOL headers a decoder needs before it
// can start at this packet. Returns 0 when the packet has no VOL header.
size_t config_header_length(const uint8_t* data, size_t size);

}  // namespace cvpipe
