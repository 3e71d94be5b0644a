#pragma once
// The probes behind `ferry doctor`, one function per area. Each really asks
// the kernel (ioctls, io_uring setup, a BPF load+attach); nothing is guessed
// from version numbers.
#include <string>
#include <vector>

#include "tools/doctor/report.hh"

namespace ferry::doctor {

std::vector<Check> check_kvm(const std::string& device = "/dev/kvm");
std::vector<Check> check_io_uring();
std::vector<Check> check_bpf(const std::string& tracefs = "/sys/kernel/tracing");
std::vector<Check> check_system();

// Tracepoints Ferry's eBPF programs attach to: "group/name", or
// "group/name|old_name" when kernels renamed it (any one present will do).
const std::vector<std::string>& required_tracepoints();

// Runs every area into one report.
Report run_all(const std::string& kvm_device = "/dev/kvm");

}  // namespace ferry::doctor
