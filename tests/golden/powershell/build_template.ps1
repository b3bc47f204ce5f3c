# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'build_template'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Builds a read-only OS template on a Windows build host. Windows is applied from the installation ISO's
    # install.wim straight onto a new GPT disk (EFI, MSR, Windows partitions); the rendered answer file
    # (Windows\Panther\unattend.xml) and the provisioning script it runs at first logon are injected offline.
    # A build VM boots the disk: Windows finishes setup, logs on once, runs the provisioning script, which ends
    # with sysprep /generalize /oobe /shutdown. When the VM
    # is off its disk is the template: the VM is removed, the disk renamed into place, hashed and made
    # read-only. A template already at the path is never rebuilt (templates are never modified).
    $Vm = 'BUILD-win11-ltsc-2026.1'
    $Version = 'win11-ltsc-2026.1'
    $IsoPath = 'D:\Imaging\iso\win11-ltsc-2024.iso'
    $ImageIndex = [int]1
    $VhdPath = 'D:\Imaging\builds\win11-ltsc-2026.1.vhdx'
    $WorkRoot = 'D:\Imaging\tmp'
    $SizeGb = [long]64
    $MemoryMb = [long]4096
    $Switch = 'Instruments'
    $Unattend = '<?xml version="1.0"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend"><!-- it''s $(not expanded) --></unattend>
'
    $Provision = '$ErrorActionPreference = ''Stop''
& sysprep.exe /generalize /oobe /shutdown
'
    $TimeoutS = [int]7200
    $EfiType = '{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}'
    $MsrType = '{e3c9e316-0b5c-4db8-817d-f92df00215ae}'
    $BasicData = '{ebd0a0a2-b9e5-4433-87c0-68b6b72699c7}'
    $Utf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
    if (-not (Test-Path -LiteralPath $VhdPath -PathType Leaf)) {
        if (-not (Test-Path -LiteralPath $IsoPath -PathType Leaf)) { throw "installation image $IsoPath not found" }
        if (Get-VM -Name $Vm -ErrorAction SilentlyContinue) {
            # left by an interrupted build: its disk is the .partial below, which is thrown away too
            Stop-VM -Name $Vm -TurnOff -Force -ErrorAction SilentlyContinue
            Remove-VM -Name $Vm -Force
        }
        Initialize-ImagingFolder -Path (Split-Path -Path $VhdPath -Parent)
        Initialize-ImagingFolder -Path $WorkRoot
        $Partial = "$VhdPath.partial"
        if (Test-Path -LiteralPath $Partial) {
            try { Dismount-VHD -Path $Partial } catch { Write-Verbose "not mounted: $Partial" }
            Remove-Item -LiteralPath $Partial -Force
        }
        $EfiMount = Join-Path $WorkRoot ('efi-' + [guid]::NewGuid().ToString('N'))
        $WinMount = Join-Path $WorkRoot ('win-' + [guid]::NewGuid().ToString('N'))
        Initialize-ImagingFolder -Path $EfiMount
        Initialize-ImagingFolder -Path $WinMount
        New-VHD -Path $Partial -SizeBytes ($SizeGb * 1073741824) -Dynamic | Out-Null
        $vhd = Mount-VHD -Path $Partial -NoDriveLetter -PassThru
        $iso = $null
        $efi = $null
        $win = $null
        try {
            Initialize-Disk -Number $vhd.DiskNumber -PartitionStyle GPT
            $efi = New-Partition -DiskNumber $vhd.DiskNumber -Size 272629760 -GptType $EfiType
            Format-Volume -Partition $efi -FileSystem FAT32 -NewFileSystemLabel 'System' -Confirm:$false | Out-Null
            New-Partition -DiskNumber $vhd.DiskNumber -Size 16777216 -GptType $MsrType | Out-Null
            $win = New-Partition -DiskNumber $vhd.DiskNumber -UseMaximumSize -GptType $BasicData
            $win | Set-Partition -NoDefaultDriveLetter $true
            Format-Volume -Partition $win -FileSystem NTFS -NewFileSystemLabel 'Windows' -Confirm:$false | Out-Null
            Add-PartitionAccessPath -DiskNumber $vhd.DiskNumber -PartitionNumber $efi.PartitionNumber -AccessPath "$EfiMount\"
            Add-PartitionAccessPath -DiskNumber $vhd.DiskNumber -PartitionNumber $win.PartitionNumber -AccessPath "$WinMount\"
            $iso = Mount-DiskImage -ImagePath $IsoPath -StorageType ISO -PassThru
            $isoRoot = ((Get-Volume -DiskImage $iso).DriveLetter + ':\')
            $wim = Join-Path $isoRoot 'sources\install.wim'
            if (-not (Test-Path -LiteralPath $wim)) { throw "$IsoPath holds no sources\install.wim" }
            Expand-WindowsImage -ImagePath $wim -Index $ImageIndex -ApplyPath "$WinMount\" | Out-Null
            & bcdboot.exe (Join-Path $WinMount 'Windows') /s $EfiMount /f UEFI | Out-Null
            if ($LASTEXITCODE -ne 0) { throw "bcdboot failed with exit code $LASTEXITCODE" }
            $panther = Join-Path $WinMount 'Windows\Panther'
            $scripts = Join-Path $WinMount 'Windows\Setup\Scripts'
            Initialize-ImagingFolder -Path $panther
            Initialize-ImagingFolder -Path $scripts
            [System.IO.File]::WriteAllText((Join-Path $panther 'unattend.xml'), $Unattend, $Utf8)
            [System.IO.File]::WriteAllText((Join-Path $scripts 'provision.ps1'), $Provision, $Utf8)
        }
        finally {
            if ($null -ne $iso) { Dismount-DiskImage -ImagePath $IsoPath | Out-Null }
            foreach ($pair in @(@($efi, $EfiMount), @($win, $WinMount))) {
                if ($null -ne $pair[0]) {
                    Remove-PartitionAccessPath -DiskNumber $vhd.DiskNumber -PartitionNumber $pair[0].PartitionNumber -AccessPath "$($pair[1])\" -ErrorAction SilentlyContinue
                }
                Remove-Item -LiteralPath $pair[1] -Force -ErrorAction SilentlyContinue
            }
            Dismount-VHD -Path $Partial
        }
        New-VM -Name $Vm -Generation 2 -MemoryStartupBytes ($MemoryMb * 1048576) -VHDPath $Partial -SwitchName $Switch | Out-Null
        Start-VM -Name $Vm
        # Setup, provisioning and sysprep run unattended; sysprep /shutdown turns the VM off when done. A VM
        # that does not get there is left for inspection, and its disk is never registered.
        $deadline = (Get-Date).AddSeconds($TimeoutS)
        while ((Get-VM -Name $Vm).State -ne 'Off') {
            if ((Get-Date) -gt $deadline) {
                throw "the build VM $Vm did not shut down within $TimeoutS s (setup or sysprep failed; inspect it)"
            }
            Start-Sleep -Seconds 15
        }
        Remove-VM -Name $Vm -Force
        Move-Item -LiteralPath $Partial -Destination $VhdPath
        Set-ItemProperty -LiteralPath $VhdPath -Name IsReadOnly -Value $true
        $Result['changed'] = $true
    }
    elseif (-not (Get-Item -LiteralPath $VhdPath).IsReadOnly) {
        throw "$VhdPath exists but is not read-only; a template is never modified, check who changed it"
    }
    $Result['path'] = $VhdPath
    $Result['version'] = $Version
    $Result['size'] = (Get-Item -LiteralPath $VhdPath).Length
    $Result['sha256'] = Get-ImagingSha256 -Path $VhdPath
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
