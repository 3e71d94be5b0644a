#include "userspace/base/thread_name.hh"

#include <sys/prctl.h>

#include <algorithm>
#include <array>

namespace ferry {

void name_this_thread(std::string_view name) {
  std::array<char, 16> buf{};  // TASK_COMM_LEN, NUL included
  const auto n = std::min(name.size(), buf.size() - 1);
  std::copy_n(name.data(), n, buf.data());
  ::prctl(PR_SET_NAME, buf.data());  // only fails for a bad pointer
}

}  // namespace ferry
