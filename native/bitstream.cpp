#include "bitstream.hpp"

#include <cstring>

namespace cvpipe {
namespace {

constexpr uint8_t kVopStartCode = 0xB6;

bool is_vol_start_code(uint8_t code) { return code >= 0x20 && code <= 0x2F; }

// Reads bits MSB first; past the end it yields zeros and marks itself exhausted, so a
// truncated header never reads out of bounds.
class BitReader {
 public:
  BitReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint32_t read(int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i) v = (v << 1) | read_bit();
    return v;
  }
  uint32_t read_bit() {
    if (pos_ >= size_ * 8) {
      exhausted_ = true;
      return 0;
    }
    uint32_t bit = (data_[pos_ >> 3] >> (7 - (pos_ & 7))) & 1;
    ++pos_;
    return bit;
  }
  void skip(int n) {
    for (int i = 0; i < n; ++i) read_bit();
  }
  bool exhausted() const { return exhausted_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  bool exhausted_ = false;
};

// Position just after the next 00 00 01 prefix at or after `from`, or `size` if none.
// memchr finds the 01 bytes (vectorised); most are not start codes.
size_t next_start_code(const uint8_t* data, size_t size, size_t from) {
  for (size_t i = from + 2; i < size;) {
    const void* found = std::memchr(data + i, 1, size - i);
    if (!found) return size;
    i = static_cast<const uint8_t*>(found) - data;
    if (data[i - 1] == 0 && data[i - 2] == 0) return i + 1;
    ++i;
  }
  return size;
}

int bits_for(int resolution) {
  int bits = 0;
  for (int v = resolution - 1; v > 0; v >>= 1) ++bits;
  return bits < 1 ? 1 : bits;
}

void parse_vol(BitReader& br, VolHeader& vol) {
  const int kExtendedPar = 15, kRectangular = 0, kGrayscale = 3;
  br.skip(1);  // random_accessible_vol
  br.skip(8);  // video_object_type_indication
  int verid = 1;
  if (br.read_bit()) {  // is_object_layer_identifier
    verid = br.read(4);
    br.skip(3);  // video_object_layer_priority
  }
  if (br.read(4) == kExtendedPar) br.skip(16);
  if (br.read_bit()) {  // vol_control_parameters
    br.skip(2 + 1);     // chroma_format, low_delay
    if (br.read_bit()) br.skip(15 + 1 + 15 + 1 + 15 + 1 + 3 + 11 + 1 + 15 + 1);  // vbv
  }
  const int shape = br.read(2);
  if (shape == kGrayscale && verid != 1) br.skip(4);
  br.skip(1);  // marker
  const int resolution = br.read(16);
  br.skip(1);  // marker
  VolHeader parsed;
  parsed.time_increment_resolution = resolution;
  parsed.time_increment_bits = bits_for(resolution);
  if (br.read_bit()) parsed.fixed_vop_time_increment = br.read(parsed.time_increment_bits);
  if (shape == kRectangular) {
    br.skip(1);
    parsed.width = br.read(13);
    br.skip(1);
    parsed.height = br.read(13);
  }
  if (br.exhausted() || resolution == 0) return;  // keep the previous VOL, if any
  parsed.found = true;
  vol = parsed;
}

VopHeader parse_vop(BitReader& br, const VolHeader& vol) {
  static const char kTypes[4] = {'I', 'P', 'B', 'S'};
  VopHeader vop{kTypes[br.read(2)], true, 0, -1};
  if (!vol.found) return vop;
  // modulo_time_base is a run of ones; a run longer than any real stream has means the
  // header is garbage, in which case we keep the VOP as coded and let the decoder judge.
  int seconds = 0;
  while (br.read_bit() && !br.exhausted()) {
    if (++seconds > 64) return vop;
  }
  br.skip(1);  // marker
  const int increment = br.read(vol.time_increment_bits);
  br.skip(1);  // marker
  const bool coded = br.read_bit();
  if (br.exhausted()) return vop;
  vop.coded = coded;
  vop.modulo_seconds = seconds;
  vop.time_increment = increment;
  return vop;
}

}  // namespace

void parse_headers(const uint8_t* data, size_t size, VolHeader& vol, std::vector<VopHeader>& vops) {
  for (size_t pos = next_start_code(data, size, 0); pos < size; pos = next_start_code(data, size, pos)) {
    const uint8_t code = data[pos];
    BitReader br(data + pos + 1, size - pos - 1);
    if (is_vol_start_code(code)) {
      parse_vol(br, vol);
    } else if (code == kVopStartCode) {
      vops.push_back(parse_vop(br, vol));
    }
  }
}

size_t config_header_length(const uint8_t* data, size_t size) {
  bool has_vol = false;
  for (size_t pos = next_start_code(data, size, 0); pos < size; pos = next_start_code(data, size, pos)) {
    if (is_vol_start_code(data[pos])) has_vol = true;
    if (data[pos] == kVopStartCode) return has_vol ? pos - 3 : 0;
  }
  return has_vol ? size : 0;
}

}  // namespace cvpipe
