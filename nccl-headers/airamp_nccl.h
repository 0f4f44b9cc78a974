/*
 * airamp: umbrella header for every NCCL plugin ABI version airamp speaks.
 *
 * Our own rendition of NCCL's frozen, versioned plugin structs. One build of
 * the plugin exports several versions at once; NCCL picks the newest symbol it
 * knows, so this covers NCCL 2.19 (net v7) / 2.21 (tuner v2) through 2.30+.
 */
#ifndef AIRAMP_NCCL_H
#define AIRAMP_NCCL_H

#include "nccl_types.h"

#include "net/net_v7.h"
#include "net/net_v8.h"
#include "net/net_v9.h"
#include "net/net_v10.h"
#include "net/net_v11.h"
#include "net/net_v12.h"

#include "tuner/tuner_v2.h"
#include "tuner/tuner_v3.h"
#include "tuner/tuner_v4.h"
#include "tuner/tuner_v5.h"
#include "tuner/tuner_v6.h"

#endif /* AIRAMP_NCCL_H */
