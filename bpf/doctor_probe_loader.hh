#pragma once
// Loader for doctor_probe.bpf.c: `ferry doctor`'s proof that this host can
// load a CO-RE tracepoint program, attach it and see it fire.
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "userspace/base/error.hh"
#include "bpf/doctor_probe.h"

struct doctor_probe_bpf;  // generated skeleton (doctor_probe.skel.h)

namespace ferry::bpf {

class DoctorProbe {
 public:
  // "category/name", as in tracefs and in the program's SEC().
  static constexpr const char* kTracepoint =
      DOCTOR_PROBE_TP_CATEGORY "/" DOCTOR_PROBE_TP_NAME;

  // Opens and loads the program, counting only calls made by target_tgid.
  // The tgid is read in the caller's pid namespace (as getpid() returns it).
  static Result<DoctorProbe> load(pid_t target_tgid);

  // Attaches to kTracepoint. Calling it again after success is a no-op.
  Status attach();
  bool attached() const;

  // Counters as the program has written them so far.
  Result<doctor_probe_counters> counters() const;
  Result<uint64_t> hits() const;

  // Fires kTracepoint `times` times from the calling thread.
  static void trigger(unsigned times);

  DoctorProbe(DoctorProbe&&) noexcept = default;
  DoctorProbe& operator=(DoctorProbe&&) noexcept = default;
  DoctorProbe(const DoctorProbe&) = delete;
  DoctorProbe& operator=(const DoctorProbe&) = delete;
  ~DoctorProbe() = default;

 private:
  // Destroying the skeleton detaches its links, then frees maps and programs.
  struct SkeletonDeleter {
    void operator()(doctor_probe_bpf* skel) const;
  };
  using SkeletonPtr = std::unique_ptr<doctor_probe_bpf, SkeletonDeleter>;

  explicit DoctorProbe(SkeletonPtr skel) : skel_(std::move(skel)) {}

  SkeletonPtr skel_;
};

struct ProbeOutcome {
  std::string tracepoint;  // DoctorProbe::kTracepoint
  uint64_t hits = 0;       // counted calls from this process
};

// Loads and attaches DoctorProbe for this process, triggers it a few times
// and checks that every call was counted. The Error says which step failed
// and, where it can tell, what to change on the host.
Result<ProbeOutcome> run_attach_probe();

}  // namespace ferry::bpf
