/* pjproject build settings for the appliance: the gateway's media user agent needs SIP, RTP,
 * SRTP and the conference bridge with a null sound device; no video, no sound card. */
#ifndef JBC_PJ_CONFIG_SITE_H
#define JBC_PJ_CONFIG_SITE_H

#define PJMEDIA_HAS_VIDEO 0
#define PJSUA_HAS_VIDEO 0
#define PJMEDIA_AUDIO_DEV_HAS_ALSA 0
#define PJMEDIA_AUDIO_DEV_HAS_PORTAUDIO 0
/* Room for the site's trunk calls plus handset legs. */
#define PJSUA_MAX_CALLS 64

#endif
