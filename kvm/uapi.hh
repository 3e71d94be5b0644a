#pragma once
// C++-safe views of the KVM uapi structs that end in a flexible array.
//
// Why this file exists: Debian 12's linux-libc-dev (6.1) declares those
// arrays with __DECLARE_FLEX_ARRAY, which wraps an empty struct. An empty
// struct is 0 bytes in C but 1 byte in C++, so in C++ sizeof(kvm_msr_list)
// is 8 instead of 4, `indices` sits at offset 8 instead of 4, and the ioctl
// numbers built from sizeof() differ from the kernel's: KVM answers EINVAL,
// or worse, reads a shifted array. (Newer headers special-case C++.) So we
// declare the fixed headers ourselves, build the ioctl numbers from them,
// and pin both to the kernel ABI with static_asserts.
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace ferry::kvm::uapi {

struct MsrListHeader {  // struct kvm_msr_list: followed by u32 indices[nmsrs]
  std::uint32_t nmsrs;
};
struct Cpuid2Header {  // struct kvm_cpuid2: followed by kvm_cpuid_entry2[nent]
  std::uint32_t nent;
  std::uint32_t padding;
};
struct MsrsHeader {  // struct kvm_msrs: followed by kvm_msr_entry[nmsrs]
  std::uint32_t nmsrs;
  std::uint32_t pad;
};
static_assert(sizeof(MsrListHeader) == 4 && sizeof(Cpuid2Header) == 8 && sizeof(MsrsHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);

inline constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kGetMsrFeatureIndexList = _IOWR(KVMIO, 0x0a, MsrListHeader);
inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
inline constexpr unsigned long kGetCpuid2 = _IOWR(KVMIO, 0x91, Cpuid2Header);

// The values a C compiler computes from <linux/kvm.h> (the kernel ABI).
static_assert(kGetMsrIndexList == 0xc004ae02);
static_assert(kGetMsrFeatureIndexList == 0xc004ae0a);
static_assert(kGetSupportedCpuid == 0xc008ae05);
static_assert(kGetMsrs == 0xc008ae88);
static_assert(kSetMsrs == 0x4008ae89);
static_assert(kSetCpuid2 == 0x4008ae90);
static_assert(kGetCpuid2 == 0xc008ae91);

// struct kvm_xsave ends in `extra` (a flexible array), so in C++ it is 4100
// bytes, not 4096, and KVM_GET_XSAVE & co. from <linux/kvm.h> are wrong.
// The fixed part is the 4 KiB legacy region; KVM_GET_XSAVE2/KVM_SET_XSAVE
// move KVM_CAP_XSAVE2 bytes (>= 4096) whatever the number says.
struct XsaveRegion {
  std::uint32_t region[1024];
};
static_assert(sizeof(XsaveRegion) == 4096);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, XsaveRegion);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, XsaveRegion);
inline constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, XsaveRegion);
static_assert(kGetXsave == 0x9000aea4);
static_assert(kSetXsave == 0x5000aea5);
static_assert(kGetXsave2 == 0x9000aecf);

// Fixed-size vCPU state structs: no flexible array, so the C++ sizes and
// the numbers <linux/kvm.h> builds from them are right. Pinned anyway, so a
// header that changes them fails here rather than as EINVAL at run time.
static_assert(KVM_GET_XCRS == 0x8188aea6 && KVM_SET_XCRS == 0x4188aea7);
static_assert(KVM_GET_LAPIC == 0x8400ae8e && KVM_SET_LAPIC == 0x4400ae8f);
static_assert(KVM_GET_VCPU_EVENTS == 0x8040ae9f && KVM_SET_VCPU_EVENTS == 0x4040aea0);
static_assert(KVM_GET_MP_STATE == 0x8004ae98 && KVM_SET_MP_STATE == 0x4004ae99);
static_assert(KVM_GET_DEBUGREGS == 0x8080aea1 && KVM_SET_DEBUGREGS == 0x4080aea2);
static_assert(KVM_GET_SREGS == 0x8138ae83 && KVM_CREATE_IRQCHIP == 0xae60);

}  // namespace ferry::kvm::uapi
