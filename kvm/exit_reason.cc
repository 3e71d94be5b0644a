#include "kvm/exit_reason.hh"

#include <linux/kvm.h>

namespace ferry::kvm {

std::string_view exit_reason_name(std::uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_UNKNOWN: return "UNKNOWN";
    case KVM_EXIT_EXCEPTION: return "EXCEPTION";
    case KVM_EXIT_IO: return "IO";
    case KVM_EXIT_HYPERCALL: return "HYPERCALL";
    case KVM_EXIT_DEBUG: return "DEBUG";
    case KVM_EXIT_HLT: return "HLT";
    case KVM_EXIT_MMIO: return "MMIO";
    case KVM_EXIT_IRQ_WINDOW_OPEN: return "IRQ_WINDOW_OPEN";
    case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
    case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
    case KVM_EXIT_INTR: return "INTR";
    case KVM_EXIT_SET_TPR: return "SET_TPR";
    case KVM_EXIT_TPR_ACCESS: return "TPR_ACCESS";
    case KVM_EXIT_NMI: return "NMI";
    case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
    case KVM_EXIT_SYSTEM_EVENT: return "SYSTEM_EVENT";
    case KVM_EXIT_X86_RDMSR: return "X86_RDMSR";
    case KVM_EXIT_X86_WRMSR: return "X86_WRMSR";
    case KVM_EXIT_DIRTY_RING_FULL: return "DIRTY_RING_FULL";
    default: return {};
  }
}

}  // namespace ferry::kvm
