// The only file that knows Python: exposes the index and extraction as cvpipe._native,
// maps C++ errors to the Python exceptions users expect, and releases the GIL while
// decoding.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>

#include "decoder.hpp"
#include "errors.hpp"
#include "extract.hpp"
#include "video_index.hpp"

namespace py = pybind11;
using namespace cvpipe;

namespace {

const std::array<std::string, kNumRepresentations> kNames = {"bgr", "mv", "mv_accumulated", "residual",
                                                             "residual_accumulated", "blocks"};

class Video {
 public:
  explicit Video(const std::string& path) {
    py::gil_scoped_release release;
    index_ = std::make_shared<const VideoIndex>(index_video(path));
  }

  const VideoIndex& index() const { return *index_; }

  // `requests` maps representation names (kNames) to frame lists.
  // `out` optionally maps dense representation names to arrays to fill (reused buffers
  // spare a batch job the page faults of fresh multi-megabyte outputs).
  py::dict extract(const std::map<std::string, std::vector<int>>& requests, bool mv_only, int threads,
                   const py::dict& out_arrays) const {
    ExtractRequest request;
    request.mv_only = mv_only;
    request.threads = threads;
    for (const auto& [name, frames] : requests) {
      const auto found = std::find(kNames.begin(), kNames.end(), name);
      if (found == kNames.end()) throw std::invalid_argument("unknown representation '" + name + "'");
      request.frames[found - kNames.begin()] = frames;
    }
    validate_request(*index_, request);
    const py::ssize_t h = index_->height, w = index_->width;
    py::dict result;
    ExtractOutputs out;
    for (int r = 0; r < kNumDense; ++r) {
      if (!requests.count(kNames[r])) continue;
      const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(request.frames[r].size()), h, w, kChannels[r]};
      const py::dtype dtype = r == kBgr ? py::dtype::of<uint8_t>() : py::dtype::of<int16_t>();
      py::array array;
      if (out_arrays.contains(kNames[r])) {
        array = out_arrays[kNames[r].c_str()].cast<py::array>();
        const bool fits = array.dtype().is(dtype) && array.ndim() == 4 &&
                          std::equal(shape.begin(), shape.end(), array.shape()) &&
                          (array.flags() & py::array::c_style) && array.writeable();
        if (!fits) {
          throw std::invalid_argument("out['" + kNames[r] + "'] must be a writeable C-contiguous " +
                                      std::string(py::str(dtype)) + " array of shape (" +
                                      std::to_string(shape[0]) + ", " + std::to_string(h) + ", " +
                                      std::to_string(w) + ", " + std::to_string(kChannels[r]) + ")");
        }
      } else {
        array = py::array(dtype, shape);
      }
      out.dense[r] = array.mutable_data();
      result[kNames[r].c_str()] = array;
    }
    {
      py::gil_scoped_release release;
      cvpipe::extract(*index_, request, out);
    }
    if (requests.count(kNames[kBlocks])) {
      py::list per_frame;
      for (const auto& b : out.blocks) {
        py::array_t<BlockVector> array(static_cast<py::ssize_t>(b.size()));
        if (!b.empty()) std::memcpy(array.mutable_data(), b.data(), b.size() * sizeof(BlockVector));
        per_frame.append(array);
      }
      result[kNames[kBlocks].c_str()] = per_frame;
    }
    return result;
  }

 private:
  std::shared_ptr<const VideoIndex> index_;
};

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "MPEG-4 Part 2 indexing and CoViAR-style extraction (see cvpipe.video for the Python face)";
  install_ffmpeg_log_capture();

  static py::exception<InvalidVideo> invalid(m, "InvalidVideoError", PyExc_ValueError);
  static py::exception<UnsupportedVideo> unsupported(m, "UnsupportedVideoError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FileMissing& e) {
      PyErr_SetString(PyExc_FileNotFoundError, e.what());
    } catch (const FileUnreadable& e) {
      PyErr_SetString(PyExc_PermissionError, e.what());
    } catch (const InvalidVideo& e) {
      PyErr_SetString(invalid.ptr(), e.what());
    } catch (const UnsupportedVideo& e) {
      PyErr_SetString(unsupported.ptr(), e.what());
    }
  });

  PYBIND11_NUMPY_DTYPE(BlockVector, source, w, h, src_x, src_y, dst_x, dst_y, flags, motion_x, motion_y, motion_scale);
  m.attr("BLOCK_DTYPE") = py::dtype::of<BlockVector>();
  m.attr("REPRESENTATIONS") = py::cast(kNames);

  py::class_<Video>(m, "Video")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("path", [](const Video& v) { return v.index().path; })
      .def_property_readonly("container", [](const Video& v) { return v.index().container; })
      .def_property_readonly("width", [](const Video& v) { return v.index().width; })
      .def_property_readonly("height", [](const Video& v) { return v.index().height; })
      .def_property_readonly("fps", [](const Video& v) { return py::make_tuple(v.index().fps_num, v.index().fps_den); })
      .def_property_readonly("frame_types", [](const Video& v) {
        return std::string(v.index().frame_types.begin(), v.index().frame_types.end());
      })
      .def_property_readonly("gop_starts", [](const Video& v) { return v.index().gop_starts; })
      .def_property_readonly("has_b_frames", [](const Video& v) { return v.index().has_b_frames; })
      .def_property_readonly("leading_packets_dropped", [](const Video& v) { return v.index().leading_packets_dropped; })
      .def_property_readonly("stream_bytes", [](const Video& v) {
        size_t total = 0;
        for (const auto& p : v.index().packets) total += p.size;
        return total;
      })
      .def("extract", &Video::extract, py::arg("requests"), py::arg("mv_only") = false, py::arg("threads") = 1,
           py::arg("out") = py::dict());
}
