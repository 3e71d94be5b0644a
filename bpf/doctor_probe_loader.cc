#include "bpf/doctor_probe_loader.hh"

#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string_view>

#include <bpf/libbpf.h>
#include <fmt/format.h>

#include "bpf/libbpf_log.hh"
#include "bpf/load_errors.hh"
#include "doctor_probe.skel.h"

namespace ferry::bpf {
namespace {

constexpr std::string_view kProgram = "doctor_probe";

}  // namespace

void DoctorProbe::SkeletonDeleter::operator()(doctor_probe_bpf* skel) const {
  doctor_probe_bpf__destroy(skel);
}

Result<DoctorProbe> DoctorProbe::load(pid_t target_tgid) {
  install_libbpf_logging();
  if (target_tgid <= 0) {
    return fail("load {}: target tgid {} is not a process id", kProgram, target_tgid);
  }
  // The program compares against the tgid in this pid namespace, which the
  // kernel identifies by the nsfs device and inode.
  struct stat pidns {};
  if (::stat("/proc/self/ns/pid", &pidns) != 0) {
    const int e = errno;
    return std::unexpected(
        sys_error(fmt::format("load {}: stat /proc/self/ns/pid", kProgram), e));
  }

  SkeletonPtr skel(doctor_probe_bpf__open());
  if (!skel) return std::unexpected(load_error(kProgram, "open", errno));

  // rodata is frozen at load: the verifier then prunes on these constants.
  skel->rodata->target_tgid = static_cast<__u32>(target_tgid);
  skel->rodata->target_pidns_dev = pidns.st_dev;
  skel->rodata->target_pidns_ino = pidns.st_ino;

  if (int err = doctor_probe_bpf__load(skel.get()); err != 0) {
    return std::unexpected(load_error(kProgram, "load", -err));
  }
  return DoctorProbe(std::move(skel));
}

Status DoctorProbe::attach() {
  if (!skel_) return fail("attach {}: probe is not loaded", kProgram);
  if (attached()) return {};
  // Stored in the skeleton's links so destroy() detaches it.
  bpf_link* link = bpf_program__attach(skel_->progs.handle_getppid);
  if (!link)
    return std::unexpected(attach_error(kProgram, DoctorProbe::kTracepoint, errno,
                                        "this kernel lacks the tracepoint: needs CONFIG_FTRACE_SYSCALLS"));
  skel_->links.handle_getppid = link;
  return {};
}

bool DoctorProbe::attached() const {
  return skel_ && skel_->links.handle_getppid != nullptr;
}

Result<doctor_probe_counters> DoctorProbe::counters() const {
  if (!skel_) return fail("read {} counters: probe is not loaded", kProgram);
  // libbpf maps .bss into our memory on kernels >= 5.5; the program updates
  // it with atomic adds, so read with atomic loads.
  if (!skel_->bss) {
    return fail("read {} counters: .bss is not memory-mapped (kernel too old?)", kProgram);
  }
  const doctor_probe_counters& live = skel_->bss->counters;
  return doctor_probe_counters{
      .hits = __atomic_load_n(&live.hits, __ATOMIC_RELAXED),
      .core_mismatches = __atomic_load_n(&live.core_mismatches, __ATOMIC_RELAXED),
  };
}

Result<uint64_t> DoctorProbe::hits() const {
  // (No expected::transform: g++ 12's <expected> lacks the monadic ops.)
  auto c = counters();
  if (!c) return std::unexpected(std::move(c).error());
  return c->hits;
}

void DoctorProbe::trigger(unsigned times) {
  // The raw syscall, so no libc could ever answer from a cache.
  for (unsigned i = 0; i < times; ++i) ::syscall(SYS_getppid);
}

Result<ProbeOutcome> run_attach_probe() {
  constexpr unsigned kTriggers = 4;
  auto probe = DoctorProbe::load(::getpid());
  if (!probe) return std::unexpected(std::move(probe).error());
  if (auto attached = probe->attach(); !attached) {
    return std::unexpected(std::move(attached).error());
  }
  DoctorProbe::trigger(kTriggers);
  auto counters = probe->counters();
  if (!counters) return std::unexpected(std::move(counters).error());
  if (counters->core_mismatches != 0) {
    return fail("{}: CO-RE read of task_struct::tgid was wrong in {} of {} hits",
                kProgram, counters->core_mismatches, counters->hits);
  }
  // Other threads of this process may add hits, never remove them.
  if (counters->hits < kTriggers) {
    return fail("{}: attached to {} but counted {} of {} getppid() calls", kProgram,
                DoctorProbe::kTracepoint, counters->hits, kTriggers);
  }
  return ProbeOutcome{.tracepoint = DoctorProbe::kTracepoint, .hits = counters->hits};
}

}  // namespace ferry::bpf
