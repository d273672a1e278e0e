// Streams the microphone to koe as 16 kHz PCM16, 20 ms per binary frame. The server's VAD finds the
// speech (and barges in on the reply); with KoeClient.pushToTalk, hold `talkKey` instead.
// Use headphones or the platform's echo cancellation, or the server hears the character too.
using UnityEngine;

namespace Koe
{
    [RequireComponent(typeof(KoeClient))]
    public class KoeMicrophone : MonoBehaviour
    {
        const int Rate = 16000, Frame = 320;  // 20 ms

        [Tooltip("Microphone device name; empty = the default one")]
        public string device = "";
        public KeyCode talkKey = KeyCode.Space;

        KoeClient client;
        AudioClip clip;
        int readPosition;
        readonly float[] frame = new float[Frame];
        readonly short[] pcm = new short[Frame];

        void Start()
        {
            client = GetComponent<KoeClient>();
            clip = Microphone.Start(string.IsNullOrEmpty(device) ? null : device, true, 1, Rate);
        }

        void Update()
        {
            if (clip == null) return;
            if (client.pushToTalk)
            {
                if (Input.GetKeyDown(talkKey)) client.SpeechStarted();
                if (Input.GetKeyUp(talkKey)) client.SpeechStopped();
            }
            int position = Microphone.GetPosition(string.IsNullOrEmpty(device) ? null : device);
            int available = (position - readPosition + clip.samples) % clip.samples;
            while (available >= Frame)
            {
                clip.GetData(frame, readPosition);  // wraps around the looping clip
                for (int i = 0; i < Frame; i++) pcm[i] = (short)Mathf.Clamp(frame[i] * 32767f, -32768f, 32767f);
                if (!client.pushToTalk || Input.GetKey(talkKey)) client.SendMicrophone(pcm);
                readPosition = (readPosition + Frame) % clip.samples;
                available -= Frame;
            }
        }

        void OnDestroy() => Microphone.End(string.IsNullOrEmpty(device) ? null : device);
    }
}
