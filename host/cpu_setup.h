/* cpu_setup.h — process-wide CPU math settings (see cpu_setup.c). */
#ifndef SERE_CPU_SETUP_H
#define SERE_CPU_SETUP_H

/* Call first in main(); may re-execute the program once (same argv). */
void sere_cpu_setup(char **argv);

#endif
