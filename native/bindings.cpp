// The only file that knows Python: exposes the index and extraction as cvpipe._native,
// maps C++ errors to the Python exceptions users expect, and releases the GIL while
// decoding.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>

#include "decoder.hpp"
#include "errors.hpp"
#include "extract.hpp"
#include "video_index.hpp"

namespace py = pybind11;
using namespace cvpipe;

namespace {

class Video {
 public:
  explicit Video(const std::string& path) {
    py::gil_scoped_release release;
    index_ = std::make_shared<const VideoIndex>(index_video(path));
  }

  const VideoIndex& index() const { return *index_; }

  py::dict extract(const std::vector<int>& frames, bool bgr, bool mv, bool mv_accumulated, bool residual,
                   bool residual_accumulated, bool blocks, bool mv_only) const {
    ExtractRequest request{frames, bgr, mv, mv_accumulated, residual, residual_accumulated, blocks, mv_only};
    validate_request(*index_, request);
    const py::ssize_t n = static_cast<py::ssize_t>(frames.size()), h = index_->height, w = index_->width;
    py::dict result;
    ExtractOutputs out;
    auto add = [&](const char* name, auto* tag, py::ssize_t channels, bool wanted) {
      using T = std::remove_pointer_t<decltype(tag)>;
      if (!wanted) return static_cast<T*>(nullptr);
      py::array_t<T> array({n, h, w, channels});
      result[name] = array;
      return array.mutable_data();
    };
    out.bgr = add("bgr", static_cast<uint8_t*>(nullptr), 3, bgr);
    out.mv = add("mv", static_cast<int16_t*>(nullptr), 2, mv);
    out.mv_accumulated = add("mv_accumulated", static_cast<int16_t*>(nullptr), 2, mv_accumulated);
    out.residual = add("residual", static_cast<int16_t*>(nullptr), 3, residual);
    out.residual_accumulated = add("residual_accumulated", static_cast<int16_t*>(nullptr), 3, residual_accumulated);
    {
      py::gil_scoped_release release;
      cvpipe::extract(*index_, request, out);
    }
    if (blocks) {
      py::list per_frame;
      for (const auto& b : out.blocks) {
        py::array_t<BlockVector> array(static_cast<py::ssize_t>(b.size()));
        if (!b.empty()) std::memcpy(array.mutable_data(), b.data(), b.size() * sizeof(BlockVector));
        per_frame.append(array);
      }
      result["blocks"] = per_frame;
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
    } catch (const InvalidVideo& e) {
      PyErr_SetString(invalid.ptr(), e.what());
    } catch (const UnsupportedVideo& e) {
      PyErr_SetString(unsupported.ptr(), e.what());
    }
  });

  PYBIND11_NUMPY_DTYPE(BlockVector, source, w, h, src_x, src_y, dst_x, dst_y, flags, motion_x, motion_y, motion_scale);
  m.attr("BLOCK_DTYPE") = py::dtype::of<BlockVector>();

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
      .def("extract", &Video::extract, py::arg("frames"), py::arg("bgr") = false, py::arg("mv") = false,
           py::arg("mv_accumulated") = false, py::arg("residual") = false, py::arg("residual_accumulated") = false,
           py::arg("blocks") = false, py::arg("mv_only") = false);
}
