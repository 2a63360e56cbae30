/* Reset handler and vector table for the Cortex-M boards bitpress targets (QEMU mps2/mps3, microbit). */
#include <stdint.h>
#include <stdlib.h>
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
extern void initialise_monitor_handles(void);
void Reset_Handler(void) {
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    *(volatile uint32_t *)0xE000ED88 |= (0xFu << 20); /* CPACR: enable CP10/CP11, else FP/MVE instructions fault */
    __asm volatile("dsb\n isb");
#endif
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    initialise_monitor_handles(); /* newlib rdimon: semihosting files and stdio */
    exit(main());                 /* semihosting SYS_EXIT: QEMU quits with this status */
}
void Default_Handler(void) {
    for (;;) {
    }
}
__attribute__((section(".isr_vector"), used)) void (*const g_vectors[16])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler, Default_Handler};
