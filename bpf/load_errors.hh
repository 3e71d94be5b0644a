#pragma once
// The errors every eBPF loader can hit, phrased so that the operator knows
// what to change on the host. One place, so `ferry doctor`, `ferry trace`
// and the migration say the same thing for the same cause.
#include <optional>
#include <string>
#include <string_view>

#include "userspace/base/error.hh"

namespace ferry::bpf {

// libbpf resolves tracepoint ids through tracefs, at either mount point:
// its events directory, or nullopt when tracefs is not mounted.
std::optional<std::string> tracefs_events_dir();

// A failed open or load of `program` (`step`: "open" or "load"); err is
// the positive errno.
Error load_error(std::string_view program, std::string_view step, int err);

// A failed attach of `program` to `tracepoint` ("category/name").
// `missing` says what a kernel lacking that tracepoint needs.
Error attach_error(std::string_view program, std::string_view tracepoint, int err,
                   std::string_view missing = "this kernel lacks the tracepoint");

}  // namespace ferry::bpf
