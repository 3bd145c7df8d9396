// Argument checks of the torch glue (CPU and CUDA). Like TORCH_CHECK, but the message is
// formatted here and handed to torch as a plain C string: on at least one torch build
// (2.11.0+cu130) an extension's TORCH_CHECK with a formatted message crashed the process
// (SIGSEGV) where a literal message raised cleanly; the C-string path works on every torch.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace npht {
namespace detail {

template <typename... Args>
std::string check_message(const Args&... args) {
  std::ostringstream ss;
  (ss << ... << args);
  return ss.str();
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
