/* Embeds the built guest image into ferry_kvm; FERRY_GUEST_BIN is its path. */
  .section .rodata
  .balign 16
  .global ferry_guest_image
ferry_guest_image:
  .incbin FERRY_GUEST_BIN
  .global ferry_guest_image_end
ferry_guest_image_end:
  .section .note.GNU-stack, "", @progbits
