// Error kinds the extractor raises. The bindings map each to the Python exception a
// user expects (FileNotFoundError, PermissionError, ValueError subclasses, IndexError); the messages
// always name the file and, where FFmpeg said something, what it said.
#pragma once

#include <stdexcept>
#include <string>

namespace cvpipe {

// The path does not exist or cannot be read.
struct FileMissing : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The file exists but this process may not read it.
struct FileUnreadable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The file is not a video, or its bitstream is truncated or corrupt.
struct InvalidVideo : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A valid video we refuse to extract from: another codec, B-VOPs.
struct UnsupportedVideo : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A GOP or frame index outside the video.
struct OutOfRange : std::out_of_range {
  using std::out_of_range::out_of_range;
};

}  // namespace cvpipe
