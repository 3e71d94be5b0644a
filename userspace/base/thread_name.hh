#pragma once
// Names the calling thread (what top -H, perf, gdb and /proc/PID/task/*/comm
// show), so a profile of a migrating VM says which of the VMM's threads
// spent the time: the vCPUs, the page senders, the receivers. The kernel
// keeps 15 bytes; a longer name is cut.
#include <string_view>

namespace ferry {

void name_this_thread(std::string_view name);

}  // namespace ferry
