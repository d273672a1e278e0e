// koe avatar client for Unity: one WebSocket to `koe serve` (docs/protocol.md, version 1).
// Needs NativeWebSocket (https://github.com/endel/NativeWebSocket) and Newtonsoft JSON
// (com.unity.nuget.newtonsoft-json). Put it on a GameObject with KoeAudioPlayer; add
// KoeMicrophone to talk and KoeVrmFace to drive a VRM's mouth and expressions.
using System;
using System.Collections.Generic;
using System.Text;
using NativeWebSocket;
using Newtonsoft.Json.Linq;
using UnityEngine;

namespace Koe
{
    [RequireComponent(typeof(KoeAudioPlayer))]
    public class KoeClient : MonoBehaviour
    {
        public const int HeaderBytes = 12;
        public const byte KindSpeech = 1;
        public const byte KindMic = 2;
        public const byte FlagLast = 1;

        [Tooltip("ws://host:port/ws of `koe serve`")]
        public string url = "ws://127.0.0.1:8765/ws";
        [Tooltip("[server] token, needed when the server binds another address than 127.0.0.1")]
        public string token = "";
        public string character = "";
        public bool pushToTalk = false;
        [Tooltip("Seconds to wait before reconnecting after the connection dropped (the session resumes); 0 = never")]
        public float reconnectSeconds = 2f;

        public string SessionId { get; private set; }
        public string State { get; private set; } = "disconnected";
        public string Subtitle { get; private set; } = "";

        public event Action<string, string> OnEmotion;   // (emotion tag, avatar expression)
        public event Action<string> OnSubtitle;           // the text of the segment now starting
        public event Action<string, bool> OnTranscript;   // (what the user said, final)
        public event Action<string, string> OnServerError; // (code, message)

        // Errors after which reconnecting cannot help (docs/protocol.md, Errors).
        static readonly HashSet<string> Final = new HashSet<string> { "unauthorized", "unsupported_version", "session_taken" };

        WebSocket socket;
        KoeAudioPlayer player;
        uint micSequence;
        string finalError;   // set by one of `Final`: no reconnect
        bool destroyed;

        void Start()
        {
            player = GetComponent<KoeAudioPlayer>();
            player.Client = this;
            Connect();
        }

        async void Connect()
        {
            socket = new WebSocket(url);
            socket.OnOpen += SendHello;
            socket.OnMessage += OnFrame;
            socket.OnClose += OnClosed;
            socket.OnError += message => Debug.LogWarning($"koe: {message}");
            await socket.Connect();
        }

        // A dropped connection comes back with the same session id in `hello`, so the conversation resumes.
        void OnClosed(WebSocketCloseCode code)
        {
            State = $"closed ({code})";
            player.Clear();
            if (!destroyed && finalError == null && reconnectSeconds > 0) Invoke(nameof(Connect), reconnectSeconds);
        }

        void Update()
        {
#if !UNITY_WEBGL || UNITY_EDITOR
            socket?.DispatchMessageQueue();
#endif
        }

        async void OnDestroy()
        {
            destroyed = true;
            if (socket != null && socket.State == WebSocketState.Open) await socket.Close();
        }

        void SendHello()
        {
            var capabilities = new JArray("binary_audio", "playback_reports");
            if (pushToTalk) capabilities.Add("push_to_talk");
            var hello = new JObject
            {
                ["type"] = "hello", ["version"] = 1, ["capabilities"] = capabilities,
                ["audio_rate"] = AudioSettings.outputSampleRate,
            };
            if (!string.IsNullOrEmpty(token)) hello["token"] = token;
            if (!string.IsNullOrEmpty(SessionId)) hello["session"] = SessionId;  // resume after a reconnect
            if (!string.IsNullOrEmpty(character)) hello["character"] = character;
            Send(hello);
        }

        public void Send(JObject message)
        {
            if (socket != null && socket.State == WebSocketState.Open) _ = socket.SendText(message.ToString(Newtonsoft.Json.Formatting.None));
        }

        public void Say(string text) => Send(new JObject { ["type"] = "text_input", ["text"] = text });

        public void SpeechStarted() { player.Clear(); Send(new JObject { ["type"] = "speech_started" }); }

        public void SpeechStopped() => Send(new JObject { ["type"] = "speech_stopped" });

        /// <summary>Barge-in from the client: report where playback stopped, then drop the rest.</summary>
        public void Interrupt()
        {
            var message = new JObject { ["type"] = "interrupt" };
            if (player.CurrentSegment(out uint segment, out int playedMs))
            {
                message["segment"] = segment;
                message["played_ms"] = playedMs;
            }
            Send(message);
            player.Clear();
        }

        public void ReportProgress(uint segment, int playedMs, bool finished)
        {
            Send(new JObject
            {
                ["type"] = finished ? "playback_finished" : "playback_progress",
                ["segment"] = segment, ["played_ms"] = playedMs,
            });
        }

        /// <summary>20 ms of 16 kHz microphone audio as one binary frame.</summary>
        public void SendMicrophone(short[] samples)
        {
            if (socket == null || socket.State != WebSocketState.Open) return;
            var frame = new byte[HeaderBytes + samples.Length * 2];
            frame[0] = KindMic;
            BitConverter.GetBytes(micSequence++).CopyTo(frame, 8);  // little-endian on every Unity target
            Buffer.BlockCopy(samples, 0, frame, HeaderBytes, samples.Length * 2);
            _ = socket.Send(frame);
        }

        // NativeWebSocket hands text and binary frames alike as bytes: JSON starts with '{',
        // an audio frame with its kind byte (1).
        void OnFrame(byte[] data)
        {
            if (data.Length == 0) return;
            if (data[0] == (byte)'{') OnEvent(JObject.Parse(Encoding.UTF8.GetString(data)));
            else if (data[0] == KindSpeech && data.Length >= HeaderBytes) OnAudio(data);
        }

        void OnAudio(byte[] data)
        {
            uint segment = BitConverter.ToUInt32(data, 4);
            uint sequence = BitConverter.ToUInt32(data, 8);
            bool last = (data[1] & FlagLast) != 0;
            var samples = new float[(data.Length - HeaderBytes) / 2];
            for (int i = 0; i < samples.Length; i++)
                samples[i] = BitConverter.ToInt16(data, HeaderBytes + 2 * i) / 32768f;
            player.Enqueue(segment, sequence, samples, last);
        }

        void OnEvent(JObject e)
        {
            switch ((string)e["type"])
            {
                case "ready":
                    SessionId = (string)e["session"];
                    int rate = (int)e["audio"]["rate"];
                    if (rate != AudioSettings.outputSampleRate)
                        Debug.LogWarning($"koe: audio comes at {rate} Hz, the output runs at {AudioSettings.outputSampleRate} Hz");
                    player.SampleRate = rate;
                    break;
                case "state":
                    State = (string)e["state"];
                    break;
                case "transcript":
                    OnTranscript?.Invoke((string)e["text"], (bool)e["final"]);
                    break;
                case "segment_start":
                    player.StartSegment((uint)e["segment"], (string)e["text"], (string)e["emotion"], (string)e["expression"]);
                    break;
                case "lipsync":
                    var volume = e["volume"].ToObject<float[]>();
                    var vowels = e["vowels"].ToObject<float[][]>();
                    player.AddLipSync((uint)e["segment"], (uint)e["seq"], volume, vowels);
                    break;
                case "clear_audio":
                    player.Clear();
                    break;
                case "error":
                    Debug.LogWarning($"koe error {e["code"]}: {e["message"]}");
                    if (Final.Contains((string)e["code"])) finalError = (string)e["code"];
                    OnServerError?.Invoke((string)e["code"], (string)e["message"]);
                    break;
            }
        }

        // Called by the player when a segment's first sample is played.
        internal void SegmentStartedPlaying(string text, string emotion, string expression)
        {
            Subtitle = text;
            OnSubtitle?.Invoke(text);
            OnEmotion?.Invoke(emotion, expression);
        }
    }
}
