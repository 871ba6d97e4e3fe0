#!/bin/sh
# Runs inside the build root (image/pjproject/build): configure and build pjproject for
# $TRIPLET, then the pjsua2 Python module, into /build/out. Arguments: source dir, triplet,
# version. Changing this file (or source.lock, config_site.h) rebuilds the cached module.
set -eu
src="$1" triplet="$2" version="$3"
cd "$src"
export CFLAGS="-O2 -fPIC -g0" CXXFLAGS="-O2 -fPIC -g0"
# Debian's source has the bundled codecs and SRTP taken out (DFSG): use Debian's libraries.
./aconfigure --host="$triplet" --disable-shared --disable-video --disable-sound \
    --disable-v4l2 --disable-ffmpeg --disable-sdl --disable-openh264 --disable-libyuv \
    --disable-libwebrtc --disable-opencore-amr --disable-silk --disable-bcg729 \
    --disable-android-mediacodec --disable-upnp --disable-ilbc-codec --disable-g7221-codec \
    --with-external-srtp --with-external-speex --with-external-gsm --enable-speex-resample \
    --with-ssl=/usr > /build/configure.log 2>&1
grep -q 'OpenSSL library found' /build/configure.log || { echo 'configure found no OpenSSL' >&2; exit 1; }
nice -n 10 make -j2 dep > /build/make.log 2>&1
nice -n 10 make -j2 lib >> /build/make.log 2>&1
cd pjsip-apps/src/swig/python
make pjsua2_wrap.cpp > /build/swig.log 2>&1
cflags="$(make --no-print-directory -f helper.mak cflags | tr '\n' ' ')"
ldflags="$(make --no-print-directory -f helper.mak ldflags | tr '\n' ' ')"
libs="$(make --no-print-directory -f helper.mak libs | sed 's/^/-l/' | tr '\n' ' ')"
# shellcheck disable=SC2086  # the flags are word lists
nice -n 10 "$triplet-g++" -shared -fPIC -O2 -g0 $cflags \
    -I/usr/include/python3.11 "-I/usr/include/$triplet/python3.11" \
    pjsua2_wrap.cpp -o _pjsua2.so $ldflags $libs -Wl,--as-needed -Wl,-z,relro -Wl,-z,now
"$triplet-strip" --strip-unneeded _pjsua2.so
info="/build/out/pjsua2-$version.dist-info"
mkdir -p "$info"
cp pjsua2.py _pjsua2.so /build/out/
printf 'Metadata-Version: 2.1\nName: pjsua2\nVersion: %s\nSummary: pjsua2 (pjproject) built from Debian source for the JBC appliance image\n' \
    "$version" > "$info/METADATA"
printf 'image/pjproject/build\n' > "$info/INSTALLER"
