// Audio worklet: cut the microphone (already at 16 kHz, the AudioContext's rate) into PCM16 frames.
class MicFrames extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frame = new Int16Array(options.processorOptions.frame);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (const sample of channel) {
      this.frame[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(sample * 32767)));
      if (this.filled === this.frame.length) {
        this.port.postMessage(this.frame.slice());
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("mic-frames", MicFrames);
