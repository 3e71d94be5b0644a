#include "tools/doctor/checks.hh"

namespace ferry::doctor {

Report run_all(const std::string& kvm_device) {
  Report r;
  r.add_all(check_kvm(kvm_device));
  r.add_all(check_io_uring());
  r.add_all(check_bpf());
  r.add_all(check_system());
  return r;
}

}  // namespace ferry::doctor
