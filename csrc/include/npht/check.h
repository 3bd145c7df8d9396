// Argument checks of the torch glue (CPU and CUDA). Like TORCH_CHECK, but the message is
// built here without iostreams and handed to torch as a plain C string.
//
// Why: with this workplace's GPU image (torch 2.11.0+cu130, g++ 13) an extension's
// TORCH_CHECK whose message contained a number crashed the process (SIGSEGV), whereas
// messages of string literals only raised cleanly; formatting with std::ostringstream in the
// extension crashed the same way. Formatting numbers through std::ostream uses the
// process-wide locale's num_put facet, the suspected culprit (a libstdc++ of another
// version loaded first); std::to_string / snprintf do not touch it.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace npht {
namespace detail {

inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
void append(std::string& s, T v) {
  s += std::to_string(v);
}
inline void append(std::string& s, c10::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += "]";
}
inline void append(std::string& s, const std::vector<int64_t>& v) {
  append(s, c10::IntArrayRef(v));
}

template <typename... Args>
std::string check_message(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

}  // namespace detail
}  // namespace npht

#define NPHT_TORCH_CHECK(cond, ...)                                                       \
  do {                                                                                    \
    if (C10_UNLIKELY(!(cond))) {                                                          \
      const std::string npht_check_msg_ = ::npht::detail::check_message(__VA_ARGS__);     \
      ::c10::detail::torchCheckFail(__func__, __FILE__, static_cast<uint32_t>(__LINE__),  \
                                    npht_check_msg_.c_str());                             \
    }                                                                                     \
  } while (0)
